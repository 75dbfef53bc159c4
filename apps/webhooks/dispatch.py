"""The outbox's drain: each shard's events, in order of their transactions, become deliveries.

Per shard, a cursor (`events_dispatch_cursor`: the last `(txid, id)` handed over) moves over
the events whose writing transaction is older than every transaction still running
(`pg_snapshot_xmin`), so no event can still commit behind it. Only the events of clients with
an enabled endpoint are read; with none, the cursor just moves to the horizon. Each batch's
deliveries are inserted in the control database (unique per endpoint and event), then the
cursor moves, in the shard's transaction that locked it (one dispatcher per shard at a time:
others skip it). A crash in between leaves the cursor where it was: the batch is handed over
again and adds nothing twice. Events are never updated, so the outbox costs one row per event
and nothing more. Every event on the shard is handed over, served bucket or not: a move's copy
is the same event as the source's, and the delivery it maps to is the same row. A ledger
entry's event is rendered from its entry: the cursor stops before one whose entry has not
arrived yet (a move's first copy brings each table on its own).
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone

from apps.events.models import Event
from apps.events.rendering import event_body, with_objects
from apps.webhooks.models import DeliveryStatus, EndpointStatus, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

_LOCK_CURSOR = "SELECT txid, event_id FROM events_dispatch_cursor WHERE id = 1 FOR UPDATE SKIP LOCKED"
# Every transaction with an id below it has ended: no event can still commit behind it.
_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
# The next events of clients with an endpoint, light (their objects are read only if wanted).
_NEXT = """
SELECT txid, id, client_id, type FROM events_event
 WHERE (txid, id) > (%s, %s) AND txid < %s AND client_id = ANY(%s)
 ORDER BY txid, id LIMIT %s
"""
_FULL = "SELECT id, client_id, type, object_id, seq, data, created_at, txid FROM events_event WHERE id = ANY(%s)"
_MOVE_CURSOR = "UPDATE events_dispatch_cursor SET txid = %s, event_id = %s WHERE id = 1"
_LAST_ID = uuid.UUID(int=2**128 - 1)


def dispatch_shard(alias: str, *, batch: int = 500, budget_seconds: float = 5.0) -> int:
    """Hand `alias`'s new events over for up to `budget_seconds`; returns how many deliveries were queued."""
    queued = 0
    deadline = time.monotonic() + budget_seconds
    while time.monotonic() < deadline:
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(_LOCK_CURSOR)
            position = cursor.fetchone()
            if position is None:
                return queued  # another dispatcher has this shard now
            cursor.execute(_HORIZON)
            horizon = cursor.fetchone()[0]
            # Read after the horizon: an endpoint created later missed only events that had
            # committed before it existed (an endpoint gets the events that follow its creation).
            clients = subscribed_clients()
            heads: list[tuple] = []
            if clients:
                cursor.execute(_NEXT, [*position, horizon, list(clients), batch])
                heads = cursor.fetchall()
            # Fewer than a batch: every event below the horizon is handed over or no one's.
            last = heads[-1][:2] if len(heads) == batch else max((horizon - 1, _LAST_ID), tuple(position))
            gap = None
            if heads:
                events, gap, endpoints = _wanted_events(alias, cursor, heads)
                if gap is not None:  # stop before it: nothing after it is handed over yet
                    last = max([tuple(h[:2]) for h in heads if tuple(h[:2]) < gap], default=tuple(position))
                    events = [e for e in events if (e.txid, e.id) < gap]
                if events:
                    queued += queue_deliveries(events, endpoints)
            if tuple(last) != tuple(position):
                cursor.execute(_MOVE_CURSOR, list(last))
        if len(heads) < batch or gap is not None:
            break
    return queued


def _wanted_events(
    alias: str, cursor: Any, heads: list[tuple]
) -> tuple[list[Event], tuple | None, list[WebhookEndpoint]]:
    """The events of `heads` some endpoint wants, with their objects, in cursor order; the first
    one whose ledger entry is not on this shard yet (a move's first copy brings each table on its
    own: the entries may follow the events by seconds), where the cursor must stop; and the
    endpoints read for them."""
    endpoints = enabled_endpoints({client for _, _, client, _ in heads})
    wanted = [
        event_id
        for _, event_id, client, kind in heads
        if any(e.client_id == client and e.wants(kind) for e in endpoints)
    ]
    if not wanted:
        return [], None, endpoints
    cursor.execute(_FULL, [wanted])
    fetched = [Event(*row) for row in cursor.fetchall()]
    complete = with_objects(alias, fetched)
    present = {event.id for event in complete}
    missing = [(event.txid, event.id) for event in fetched if event.id not in present]
    if missing:
        log.info("%s: %d event(s) wait for their ledger entry to arrive", alias, len(missing))
    return sorted(complete, key=lambda e: (e.txid, e.id)), min(missing, default=None), endpoints


def subscribed_clients() -> set[int]:
    """The clients with an enabled endpoint: the only ones whose events are read."""
    rows = WebhookEndpoint.objects.filter(status=EndpointStatus.ENABLED).values_list("client_id", flat=True).distinct()
    return set(rows)


def enabled_endpoints(clients: set[int]) -> list[WebhookEndpoint]:
    return list(WebhookEndpoint.objects.filter(client_id__in=clients, status=EndpointStatus.ENABLED))


def queue_deliveries(
    events: list[Event], endpoints: list[WebhookEndpoint] | None = None, now: datetime | None = None
) -> int:
    """Insert the deliveries of `events` to their clients' enabled endpoints (committed on return);
    `endpoints`: those already read for this batch."""
    now = now or timezone.now()
    if endpoints is None:
        endpoints = enabled_endpoints({e.client_id for e in events})
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
        # Shared locks on the endpoints (a deletion takes them exclusively): none is deleted under
        # us, and one deleted before is left out.
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT id FROM webhooks_endpoint WHERE id = ANY(%s) FOR SHARE", [[e.id for e in endpoints]])
            present = {row[0] for row in cursor.fetchall()}
        rows = [row for row in rows if row.endpoint_id in present]
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
