from __future__ import annotations

from datetime import datetime
from typing import Any

from rest_framework import serializers

from apps.common.api import AmountField
from apps.common.metadata import DescriptionField, MetadataField
from apps.common.openapi import BODY_KEY_PATTERN, CurrencyField, IdField
from apps.transfers.models import FailureReason, Transfer, TransferStatus
from apps.transfers.saga import Event
from apps.transfers.selectors import ReceivedTransfer

# What a batch item's `status` and `error.code` can be (the single endpoint's answers).
BATCH_ITEM_STATUSES = [(201, "201"), (202, "202"), (400, "400"), (404, "404"), (409, "409"), (422, "422")]
BATCH_ITEM_ERROR_CODES = [
    "parameter_invalid",
    "parameter_missing",
    "invalid_amount",
    "unsupported_currency",
    "same_wallet",
    "idempotency_key_missing",
    "idempotency_key_invalid",
    "wallet_not_found",
    "idempotency_request_in_progress",
    "idempotency_key_reused",
    "currency_mismatch",
]


class TransferCreateIn(serializers.Serializer):
    """{"from": wallet id, "to": wallet id, "amount_minor": int, "currency": "USD"}

    Describes the body in the OpenAPI schema only: the endpoints validate it with
    `apps.transfers.validation.parse_transfer_body`, shared by the single and batch endpoints.
    """

    amount_minor = AmountField(help_text="Positive integer in minor units (cents for USD).")
    currency = CurrencyField(help_text="ISO 4217 code: the paying wallet's currency.")
    description = DescriptionField(required=False)
    metadata = MetadataField(required=False)

    def get_fields(self) -> dict[str, serializers.Field]:
        # "from" is a Python keyword, so these two are added here rather than as attributes.
        fields = super().get_fields()
        fields["from"] = IdField(help_text="The paying wallet: one of yours.")
        fields["to"] = IdField(help_text="The receiving wallet: any active wallet of the same currency.")
        return fields


class TransferEventOut(serializers.Serializer):
    status = serializers.ChoiceField(TransferStatus.choices, source="to_status")
    reason = serializers.ChoiceField(FailureReason.choices, allow_null=True, help_text="Why it failed, if it did.")
    at = serializers.DateTimeField()


class TransferSummaryOut(serializers.Serializer):
    """A transfer as lists show it (no status history). In the OpenAPI schema only: responses
    are built by `transfer_out` (a hot path)."""

    id = IdField()
    amount_minor = AmountField()
    currency = CurrencyField()
    status = serializers.ChoiceField(TransferStatus.choices)
    failure_reason = serializers.ChoiceField(FailureReason.choices, allow_null=True, help_text="Set once failed.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    refund_of = IdField(allow_null=True, help_text="For a refund: the transfer it pays back. Null otherwise.")
    amount_refunded = serializers.IntegerField(
        min_value=0, help_text="Refunded or being refunded (refunds not failed); at most amount_minor."
    )
    description = DescriptionField()
    metadata = MetadataField()

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"] = IdField(source="payer_id", help_text="The paying wallet.")
        fields["to"] = IdField(source="payee_id", help_text="The receiving wallet.")
        return fields


class PaidTransferOut(TransferSummaryOut):
    """In a wallet's list of transfers: one it paid (the transfer as its payer sees it)."""

    direction = serializers.ChoiceField(["out"], help_text="`out`: the wallet paid it.")


class ReceivedTransferOut(serializers.Serializer):
    """In a wallet's list of transfers: one it received, as its credit says it (another client's
    transfer shows no more than that)."""

    id = IdField(help_text="The transfer.")
    direction = serializers.ChoiceField(["in"], help_text="`in`: the wallet was credited.")
    amount_minor = AmountField(help_text="Credited to the wallet.")
    currency = CurrencyField()
    status = serializers.ChoiceField(["completed"], help_text="A credit is final: the transfer completed.")
    to = IdField(help_text="The credited wallet (this one).")
    entry_id = IdField(help_text="The credit in the wallet's entries.")
    credited_at = serializers.DateTimeField()


def received_out(received: ReceivedTransfer) -> dict[str, Any]:
    return {
        "id": str(received.transfer_id),
        "direction": "in",
        "amount_minor": received.amount_minor,
        "currency": received.currency,
        "status": "completed",
        "to": str(received.wallet_id),
        "entry_id": str(received.entry_id),
        "credited_at": iso_utc(received.credited_at),
    }


class RefundOut(serializers.Serializer):
    id = IdField(help_text="The refund's transfer (GET /v1/transfers/{id}).")
    amount_minor = AmountField()
    status = serializers.ChoiceField(
        ["pending", "succeeded", "failed"],
        help_text="`succeeded` once the payer is credited; `failed` (nothing moved) with the reason.",
    )
    failure_reason = serializers.ChoiceField(FailureReason.choices, allow_null=True)
    created_at = serializers.DateTimeField()


class TransferOut(TransferSummaryOut):
    """A transfer with its status history and refunds (in the OpenAPI schema only, as `TransferSummaryOut`)."""

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["status_history"] = TransferEventOut(many=True, help_text="Every transition, oldest first.")
        fields["refunds"] = RefundOut(many=True, help_text="Its refunds, oldest first.")
        return fields


def iso_utc(value: datetime) -> str:
    # As DRF's DateTimeField renders it (UTC as "Z"), so every endpoint shows the same text.
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def transfer_out(
    transfer: Transfer, events: list[Event] | None = None, refunds: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The transfer as the API shows it (the shape of TransferOut, built directly: this is a hot path).

    With `events` (the detail's shape) it carries its history and its `refunds` (none if not given)."""
    body: dict[str, Any] = {
        "id": str(transfer.id),
        "amount_minor": transfer.amount_minor,
        "currency": transfer.currency,
        "status": transfer.status,
        "failure_reason": transfer.failure_reason,
        "created_at": iso_utc(transfer.created_at),
        "updated_at": iso_utc(transfer.updated_at),
        "from": str(transfer.payer_id),
        "to": str(transfer.payee_id),
        "refund_of": None if transfer.refund_of is None else str(transfer.refund_of),
        "amount_refunded": transfer.amount_refunded,
        "description": transfer.description,
        "metadata": transfer.metadata or {},
    }
    if events is not None:
        body["status_history"] = [{"status": e.to_status, "reason": e.reason, "at": iso_utc(e.at)} for e in events]
        body["refunds"] = refunds or []
    return body


class BalanceOut(serializers.Serializer):
    wallet_id = IdField()
    currency = CurrencyField()
    posted = serializers.IntegerField(min_value=0, help_text="Balance counting settled movements only.")
    pending_out = serializers.IntegerField(min_value=0, help_text="Debited by transfers not yet completed or refunded.")
    held = serializers.IntegerField(min_value=0, help_text="Reserved by holds not yet captured, voided or expired.")
    available = serializers.IntegerField(
        min_value=0, help_text="What the wallet can pay now: posted - pending_out - held."
    )


class BalanceAtOut(serializers.Serializer):
    """The balance at a point in time (`?at=`), from the ledger entries' running balance."""

    wallet_id = IdField()
    currency = CurrencyField()
    at = serializers.DateTimeField(help_text="The point in time asked for.")
    available = serializers.IntegerField(
        min_value=0,
        help_text="The running balance after the wallet's last entry at or before `at` (0 before its first): what it"
        " could pay then (transfers in flight and holds had taken their amounts out).",
    )
    entry_seq = serializers.IntegerField(min_value=0, help_text="That entry's `seq` (0: none yet).")
    entry_id = IdField(allow_null=True, help_text="That entry (null: none yet).")


class TransferBatchItemIn(TransferCreateIn):
    idempotency_key = serializers.RegexField(
        BODY_KEY_PATTERN, max_length=255, help_text="This item's own Idempotency-Key (1-255 printable ASCII)."
    )


class TransferBatchIn(serializers.Serializer):
    transfers = serializers.ListField(child=TransferBatchItemIn(), min_length=1, max_length=1000)


class ItemErrorOut(serializers.Serializer):
    """The error the single endpoint would have answered for this item."""

    code = serializers.ChoiceField(BATCH_ITEM_ERROR_CODES)
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)


class TransferBatchResultOut(serializers.Serializer):
    index = serializers.IntegerField(min_value=0, help_text="Position of the item in the request.")
    outcome = serializers.ChoiceField(
        ["accepted", "replayed", "rejected"],
        help_text="`accepted`: created now; `replayed`: its key's earlier answer; `rejected`: see `error`.",
    )
    status = serializers.ChoiceField(
        BATCH_ITEM_STATUSES, help_text="The HTTP status the single endpoint would have answered."
    )
    transfer = TransferOut(allow_null=True, help_text="Null when rejected.")
    error = ItemErrorOut(allow_null=True, help_text="Null unless rejected.")


class TransferBatchOut(serializers.Serializer):
    results = TransferBatchResultOut(many=True)
