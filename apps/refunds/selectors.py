from __future__ import annotations

from apps.refunds.models import Refund
from apps.sharding.routing import alias_for_id
from apps.transfers.models import Transfer, TransferStatus


def refund_list(*, original: Transfer) -> list[Refund]:
    """A transfer's refunds, oldest first, from its shard (only a completed, non-refund transfer has any)."""
    if original.refund_of is not None or original.status != TransferStatus.COMPLETED:
        return []
    refunds = Refund.objects.using(alias_for_id(original.id)).filter(original_id=original.id)
    return list(refunds.order_by("created_at", "id"))
