from __future__ import annotations

from typing import Any

from apps.refunds.models import Refund
from apps.transfers.api.serializers import iso_utc


def refund_out(refund: Refund) -> dict[str, Any]:
    """A refund as a transfer's `refunds` list shows it (the shape of RefundOut)."""
    return {
        "id": str(refund.transfer_id),
        "amount_minor": refund.amount_minor,
        "status": refund.status,
        "failure_reason": refund.failure_reason,
        "created_at": iso_utc(refund.created_at),
    }
