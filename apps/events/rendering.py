"""An event as the API shows it and as a webhook sends it (the same JSON)."""

from __future__ import annotations

import json
from typing import Any

from apps.events.models import Event
from apps.transfers.api.serializers import iso_utc


def event_out(event: Event) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "type": event.type,
        "created_at": iso_utc(event.created_at),
        "object_id": str(event.object_id),
        "seq": event.seq,
        "data": {"object": json.loads(event.data)},
    }


def event_body(event: Event) -> str:
    """The webhook's body: compact JSON, signed as sent."""
    return json.dumps(event_out(event), separators=(",", ":"), ensure_ascii=False)
