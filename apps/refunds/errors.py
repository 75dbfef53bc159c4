from __future__ import annotations

from apps.common.errors import DomainError


class RefundNotAllowed(DomainError):
    """The client may see the transfer but not refund it: only the payee's side moves its money back."""

    code = "refund_not_allowed"
    status = 403
    default_message = (
        "Only the owner of the wallet that was paid may refund this transfer; the client that paid it may only"
        " where that wallet allows refunds by the payer (payer_may_refund)."
    )


class TransferNotRefundable(DomainError):
    code = "transfer_not_refundable"
    status = 409
    default_message = "Only a completed transfer that is not itself a refund can be refunded."


class TransferFullyRefunded(DomainError):
    code = "transfer_fully_refunded"
    status = 409
    default_message = "The transfer's whole amount is already refunded (or being refunded)."


class RefundExceedsRemaining(DomainError):
    code = "refund_exceeds_remaining"
    status = 422
    default_message = "A refund cannot exceed what remains refundable of the transfer."
