"""Celery tasks of the `webhooks` queue (its own worker: never in the saga's way)."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timedelta

from celery import shared_task
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from apps.sharding.routing import shard_aliases
from apps.webhooks.delivering import send_due
from apps.webhooks.dispatch import dispatch_shard
from apps.webhooks.models import DeliveryStatus, WebhookDelivery

log = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def dispatch_events() -> int:
    """Every shard's outbox into deliveries; sending starts at once when there are some."""
    queued = 0
    for alias in shard_aliases():
        try:
            queued += dispatch_shard(alias)
        except Exception:  # one shard down must not stop the others' events
            log.exception("dispatching the events of %s failed; next run tries again", alias)
    if queued:
        send_deliveries.delay()
    return queued


@shared_task(ignore_result=True)
def send_deliveries() -> int:
    """Due deliveries, turn after turn, for a bounded time (beat starts another)."""
    sent = 0
    deadline = time.monotonic() + 2 * settings.WEBHOOK_TIMEOUT_SECONDS + 5
    while time.monotonic() < deadline:
        attempted = send_due()
        sent += attempted
        if not attempted:
            break
    return sent


@shared_task(ignore_result=True)
def purge_old() -> None:
    """Events past their retention (handed over or not: a dispatcher down that long leaves them to
    GET /v1/events only), and finished deliveries past theirs."""
    event_cutoff = timezone.now() - timedelta(days=settings.EVENT_RETENTION_DAYS)
    for alias in shard_aliases():
        try:
            purge_events(alias, event_cutoff)
        except Exception:
            log.exception("purging the events of %s failed; next run tries again", alias)
    delivery_cutoff = timezone.now() - timedelta(days=settings.WEBHOOK_DELIVERY_RETENTION_DAYS)
    WebhookDelivery.objects.filter(created_at__lt=delivery_cutoff).exclude(status=DeliveryStatus.PENDING).delete()


def purge_events(alias: str, cutoff: datetime, batch: int = 5000) -> int:
    """Delete in batches, by id (time-ordered: the primary key's range), in served buckets only
    (a move's copy is the mover's to clean)."""
    before = uuid.UUID(int=int(cutoff.timestamp() * 1000) << 80)
    deleted = 0
    while True:
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(
                "DELETE FROM events_event WHERE id IN"
                " (SELECT id FROM events_event WHERE id < %s AND sharding_serves(id) LIMIT %s)",
                [before, batch],
            )
            deleted += cursor.rowcount
            if cursor.rowcount < batch:
                return deleted
