"""A hold as the API shows it, rendered once and stored for byte-identical replays."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from apps.holds.models import Hold, HoldStatus
from apps.transfers.api.serializers import iso_utc


def _iso(value: datetime | None) -> str | None:
    return None if value is None else iso_utc(value)


def hold_out(hold: Hold) -> dict[str, Any]:
    return {
        "id": str(hold.id),
        "from": str(hold.payer_id),
        "to": str(hold.payee_id),
        "amount_minor": hold.amount_minor,
        "currency": hold.currency,
        "status": hold.status,
        "failure_reason": hold.failure_reason,
        "captured_minor": hold.captured_minor,
        "transfer_id": None if hold.transfer_id is None else str(hold.transfer_id),
        "expires_at": _iso(hold.expires_at),
        "resolved_at": _iso(hold.resolved_at),
        "created_at": _iso(hold.created_at),
    }


def render_hold(hold: Hold, *, created: bool = False) -> tuple[int, str]:
    """201 for a new hold (held or failed), 200 otherwise; the JSON as sent."""
    status = 201 if created else 200
    assert hold.status in HoldStatus.values  # noqa: S101
    return status, json.dumps(hold_out(hold), separators=(",", ":"), ensure_ascii=False)
