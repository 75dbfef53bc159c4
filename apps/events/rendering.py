"""An event as the API shows it and as a webhook sends it (the same JSON)."""

from __future__ import annotations

import json
from typing import Any, cast

from apps.events.models import Event
from apps.ledger.api.serializers import entry_out
from apps.ledger.models import LedgerEntry
from apps.transfers.api.serializers import iso_utc


def with_objects(alias: str, events: list[Event]) -> list[Event]:
    """`events` of `alias` with their objects: a ledger entry's event stores none (the entry
    never changes and lives beside it, in the same bucket), so it is rendered from the entry.
    One whose entry is not here yet (a move's first copy brings each table on its own) is left
    out: the dispatcher stops before it (apps.webhooks.dispatch)."""
    missing = [event.object_id for event in events if event.data is None]
    if not missing:
        return events
    entries = LedgerEntry.objects.using(alias).in_bulk(missing)
    complete: list[Event] = []
    for event in events:
        if event.data is None:
            entry = entries.get(event.object_id)
            if entry is None:
                continue
            event.data = json.dumps(entry_out(entry))
        complete.append(event)
    return complete


def event_out(event: Event) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "type": event.type,
        "created_at": iso_utc(event.created_at),
        "object_id": str(event.object_id),
        "seq": event.seq,
        "data": {"object": json.loads(cast(str, event.data))},
    }


def event_body(event: Event) -> str:
    """The webhook's body: compact JSON, signed as sent."""
    return json.dumps(event_out(event), separators=(",", ":"), ensure_ascii=False)
