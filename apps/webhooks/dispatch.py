"""The outbox's drain: each shard's undispatched events become deliveries to matching endpoints.

Per shard, like the transfer drains: a batch of events of buckets the shard serves is locked
(SKIP LOCKED: dispatchers side by side take different rows), its deliveries are inserted in
the control database (unique per endpoint and event, so a batch dispatched twice, after a
crash or from a bucket's new shard, adds nothing), and only then are the events marked
dispatched on the shard. A crash in between leaves them undispatched: done again, no loss.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime

from django.conf import settings
from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone

from apps.events.models import Event
from apps.events.rendering import event_body
from apps.webhooks.models import DeliveryStatus, EndpointStatus, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

_CLAIM = """
SELECT id, client_id, type, object_id, seq, data, created_at FROM events_event
 WHERE NOT dispatched AND sharding_serves(id)
 ORDER BY id LIMIT %s
   FOR UPDATE SKIP LOCKED
"""
_MARK = "UPDATE events_event SET dispatched = true WHERE id = ANY(%s)"


def dispatch_shard(alias: str, *, batch: int = 500, budget_seconds: float = 5.0) -> int:
    """Drain `alias`'s outbox for up to `budget_seconds`; returns how many deliveries were queued."""
    queued = 0
    deadline = time.monotonic() + budget_seconds
    while time.monotonic() < deadline:
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(_CLAIM, [batch])
            events = [Event(*row) for row in cursor.fetchall()]
            if not events:
                break
            queued += queue_deliveries(events)
            cursor.execute(_MARK, [[e.id for e in events]])
        if len(events) < batch:
            break
    return queued


def queue_deliveries(events: list[Event], now: datetime | None = None) -> int:
    """Insert the deliveries of `events` to their clients' enabled endpoints (committed on return)."""
    now = now or timezone.now()
    clients = {e.client_id for e in events}
    endpoints = list(WebhookEndpoint.objects.filter(client_id__in=clients, status=EndpointStatus.ENABLED))
    if not endpoints:
        return 0
    rows: list[WebhookDelivery] = []
    dropped: dict[uuid.UUID, int] = {}
    room = {endpoint.id: _room(endpoint) for endpoint in endpoints}
    for event in events:
        body = None
        for endpoint in endpoints:
            if endpoint.client_id != event.client_id or not endpoint.wants(event.type):
                continue
            if room[endpoint.id] <= 0:
                dropped[endpoint.id] = dropped.get(endpoint.id, 0) + 1
                continue
            room[endpoint.id] -= 1
            body = body or event_body(event)
            rows.append(
                WebhookDelivery(
                    endpoint=endpoint, event_id=event.id, event_type=event.type, object_id=event.object_id,
                    body=body, next_attempt_at=now, created_at=now,
                )
            )  # fmt: skip
    with transaction.atomic(using="default"):
        WebhookDelivery.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
        for endpoint_id, count in dropped.items():
            WebhookEndpoint.objects.filter(id=endpoint_id).update(events_dropped=F("events_dropped") + count)
    for endpoint_id, count in dropped.items():
        log.warning("webhook endpoint %s: backlog at its cap, %d event(s) not queued", endpoint_id, count)
    return len(rows)


def _room(endpoint: WebhookEndpoint) -> int:
    """How many more deliveries the endpoint's backlog may take (a bounded count: one index range)."""
    cap = settings.WEBHOOK_MAX_PENDING_PER_ENDPOINT
    pending = WebhookDelivery.objects.filter(endpoint=endpoint, status=DeliveryStatus.PENDING)[:cap].count()
    return cap - pending
