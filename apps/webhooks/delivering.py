"""Sending due deliveries: claimed under a lease, one thread per endpoint, every attempt recorded.

A claim moves `next_attempt_at` a lease ahead, so a sender killed mid-send leaves the
delivery to be sent again when the lease runs out (at least once, never lost). An endpoint's
deliveries go out one after the other in its own thread, on one kept-alive connection, their
successes recorded together (up to RECORD_EVERY in one transaction): the first failure stops that
endpoint's turn (the rest wait for the same retry), so a hanging endpoint costs one timeout
per turn and delays no other endpoint. Failures are retried with exponential backoff and
jitter for WEBHOOK_RETRY_FOR_SECONDS; an endpoint failing for WEBHOOK_DISABLE_AFTER_SECONDS
(and WEBHOOK_DISABLE_MIN_FAILURES times) in a row is disabled.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone

from apps.webhooks import outbound
from apps.webhooks.models import DeliveryStatus, EndpointStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from apps.webhooks.signing import SIGNATURE_HEADER, signature_header

log = logging.getLogger(__name__)

_CLAIM = """
UPDATE webhooks_delivery d SET next_attempt_at = %s
 WHERE d.id IN (
       SELECT d2.id FROM webhooks_delivery d2 JOIN webhooks_endpoint e ON e.id = d2.endpoint_id
        WHERE d2.status = 'pending' AND d2.next_attempt_at <= %s AND e.status = 'enabled'
        ORDER BY d2.next_attempt_at, d2.id LIMIT %s
          FOR UPDATE OF d2 SKIP LOCKED)
RETURNING d.id
"""
MAX_THREADS = 16


def claim_due(limit: int, now: datetime | None = None) -> list[WebhookDelivery]:
    now = now or timezone.now()
    with transaction.atomic(using="default"), connections["default"].cursor() as cursor:
        cursor.execute(_CLAIM, [now + timedelta(seconds=settings.WEBHOOK_LEASE_SECONDS), now, limit])
        ids = [row[0] for row in cursor.fetchall()]
    deliveries = WebhookDelivery.objects.filter(id__in=ids).select_related("endpoint")
    return sorted(deliveries, key=lambda d: (d.created_at, d.id))


def send_due(limit: int = 200) -> int:
    """Claim up to `limit` due deliveries and send them; returns how many were attempted."""
    deliveries = claim_due(limit)
    if not deliveries:
        return 0
    by_endpoint: dict[uuid.UUID, list[WebhookDelivery]] = defaultdict(list)
    for delivery in deliveries:
        by_endpoint[delivery.endpoint_id].append(delivery)
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(by_endpoint))) as pool:
        attempted = sum(pool.map(_send_endpoint_turn, by_endpoint.values()))
    return attempted


# Successes are recorded together, this many at most (one transaction for them all): a sender
# killed before recording them sends them again (at least once), as it would one.
RECORD_EVERY = 50
Sent = tuple[WebhookDelivery, outbound.Outcome, datetime]  # a delivered attempt, and when it was answered


def _send_endpoint_turn(deliveries: list[WebhookDelivery]) -> int:
    # Past half the lease, the rest is handed back: another sender must not find it expired mid-turn.
    hand_back_at = time.monotonic() + settings.WEBHOOK_LEASE_SECONDS / 2
    sent: list[Sent] = []
    try:
        with outbound.EndpointSession(deliveries[0].endpoint.url) as session:
            for done, delivery in enumerate(deliveries, start=1):
                if time.monotonic() > hand_back_at:
                    record_successes(sent)
                    _hand_back(deliveries[done - 1 :], timezone.now())
                    return done - 1
                outcome = send(session, delivery)
                if outcome.ok:
                    sent.append((delivery, outcome, timezone.now()))
                    if len(sent) >= RECORD_EVERY:
                        record_successes(sent)
                        sent = []
                    continue
                record_successes(sent)
                sent = []
                retry_at = _record_one(delivery, outcome)
                if retry_at is not None:
                    # The endpoint failed: its other claimed deliveries wait for the same retry, unattempted.
                    _hand_back(deliveries[done:], retry_at)
                    return done
            record_successes(sent)
        return len(deliveries)
    finally:
        connections.close_all()  # this thread's own connections


def _hand_back(deliveries: list[WebhookDelivery], due: datetime) -> None:
    """Release claimed deliveries, unattempted, to be sent from `due`."""
    ids = [d.id for d in deliveries]
    WebhookDelivery.objects.filter(id__in=ids, status=DeliveryStatus.PENDING).update(next_attempt_at=due)


def request_headers(delivery: WebhookDelivery, body: bytes, now: float) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "shardwallet-webhooks/1",
        "Shardwallet-Event-Id": str(delivery.event_id),
        "Shardwallet-Event-Type": delivery.event_type,
        "Shardwallet-Delivery-Attempt": str(delivery.attempts + 1),
        SIGNATURE_HEADER: signature_header(delivery.endpoint.secret, body, int(now)),
    }


def send(session: outbound.EndpointSession, delivery: WebhookDelivery) -> outbound.Outcome:
    body = delivery.body.encode()
    return session.post(body, request_headers(delivery, body, time.time()))


def _record_one(delivery: WebhookDelivery, outcome: outbound.Outcome) -> datetime | None:
    try:
        return record(delivery, outcome, timezone.now())
    except (WebhookDelivery.DoesNotExist, WebhookEndpoint.DoesNotExist):
        return None  # the endpoint was deleted meanwhile, its deliveries with it


def record_successes(sent: list[Sent]) -> None:
    """Record delivered attempts of one endpoint in one transaction (the endpoint's row first,
    as in `record`), each at its own time; nothing if the endpoint was deleted meanwhile."""
    if not sent:
        return
    now = sent[-1][2]
    with transaction.atomic(using="default"):
        endpoint = WebhookEndpoint.objects.select_for_update().filter(id=sent[0][0].endpoint_id).first()
        if endpoint is None:
            return
        WebhookAttempt.objects.bulk_create(
            WebhookAttempt(
                delivery=delivery, at=at, status_code=outcome.status_code, duration_ms=outcome.duration_ms,
                error="", response_excerpt=outcome.excerpt,
            )
            for delivery, outcome, at in sent
        )  # fmt: skip
        by_code: dict[int | None, list[int]] = defaultdict(list)
        for delivery, outcome, _ in sent:
            by_code[outcome.status_code].append(delivery.id)
        for code, ids in by_code.items():
            WebhookDelivery.objects.filter(id__in=ids).update(
                status=DeliveryStatus.SUCCEEDED, attempts=F("attempts") + 1, next_attempt_at=now,
                last_status_code=code, last_error="", completed_at=now,
            )  # fmt: skip
        _endpoint_result(endpoint, True, now)


def backoff(attempts: int) -> float:
    """Seconds before attempt `attempts + 1`: doubling from the base, capped, with jitter (50-100%)."""
    ceiling = min(settings.WEBHOOK_BACKOFF_MAX_SECONDS, settings.WEBHOOK_BACKOFF_BASE_SECONDS * 2 ** (attempts - 1))
    return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


def record(delivery: WebhookDelivery, outcome: outbound.Outcome, now: datetime) -> datetime | None:
    attempts = delivery.attempts + 1
    retry_at: datetime | None = None
    if outcome.ok:
        status, completed = DeliveryStatus.SUCCEEDED, now
    elif (now - delivery.created_at).total_seconds() >= settings.WEBHOOK_RETRY_FOR_SECONDS:
        status, completed = DeliveryStatus.FAILED, now
    else:
        status, completed = DeliveryStatus.PENDING, None
        retry_at = now + timedelta(seconds=backoff(attempts))
    with transaction.atomic(using="default"):
        # The endpoint's row first, as its deletion takes it: a deletion either waits for this
        # attempt (and deletes it with the rest) or went first (DoesNotExist: nothing to record).
        endpoint = WebhookEndpoint.objects.select_for_update().get(id=delivery.endpoint_id)
        WebhookDelivery.objects.get(id=delivery.id)
        WebhookAttempt.objects.create(
            delivery=delivery, at=now, status_code=outcome.status_code, duration_ms=outcome.duration_ms,
            error=outcome.error, response_excerpt=outcome.excerpt,
        )  # fmt: skip
        WebhookDelivery.objects.filter(id=delivery.id).update(
            status=status, attempts=attempts, next_attempt_at=retry_at or now, last_status_code=outcome.status_code,
            last_error=outcome.error, completed_at=completed,
        )  # fmt: skip
        _endpoint_result(endpoint, outcome.ok, now)
    return retry_at


def _endpoint_result(endpoint: WebhookEndpoint, ok: bool, now: datetime) -> None:
    if ok:
        if endpoint.consecutive_failures or endpoint.failing_since:
            endpoint.consecutive_failures, endpoint.failing_since = 0, None
            endpoint.save(update_fields=["consecutive_failures", "failing_since"])
        return
    endpoint.consecutive_failures += 1
    endpoint.failing_since = endpoint.failing_since or now
    fields = ["consecutive_failures", "failing_since"]
    failing_for = (now - endpoint.failing_since).total_seconds()
    if (
        endpoint.status == EndpointStatus.ENABLED
        and failing_for >= settings.WEBHOOK_DISABLE_AFTER_SECONDS
        and endpoint.consecutive_failures >= settings.WEBHOOK_DISABLE_MIN_FAILURES
    ):
        endpoint.status = EndpointStatus.DISABLED
        since = f"{endpoint.failing_since:%Y-%m-%dT%H:%M:%SZ}"
        endpoint.disabled_reason = f"{endpoint.consecutive_failures} failed deliveries in a row since {since}"
        endpoint.updated_at = now
        fields += ["status", "disabled_reason", "updated_at"]
        log.warning("webhook endpoint %s disabled: %s", endpoint.id, endpoint.disabled_reason)
    endpoint.save(update_fields=fields)
