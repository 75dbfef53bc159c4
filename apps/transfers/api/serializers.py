from __future__ import annotations

from datetime import datetime
from typing import Any

from rest_framework import serializers

from apps.common.api import AmountField
from apps.transfers.models import Transfer
from apps.transfers.saga import Event


class TransferCreateIn(serializers.Serializer):
    """{"from": wallet id, "to": wallet id, "amount_minor": int, "currency": "USD"}

    Describes the body in the OpenAPI schema only: the endpoints validate it with
    `apps.transfers.validation.parse_transfer_body`, shared by the single and batch endpoints.
    """

    amount_minor = AmountField()
    currency = serializers.CharField(help_text="ISO 4217 code: the paying wallet's currency.")

    def get_fields(self) -> dict[str, serializers.Field]:
        # "from" is a Python keyword, so these two are added here rather than as attributes.
        fields = super().get_fields()
        fields["from"] = serializers.UUIDField(help_text="The paying wallet: one of yours.")
        fields["to"] = serializers.UUIDField(help_text="The receiving wallet: any active wallet of the same currency.")
        return fields


class TransferEventOut(serializers.Serializer):
    status = serializers.CharField(source="to_status")
    reason = serializers.CharField(allow_null=True)
    at = serializers.DateTimeField()


class TransferOut(serializers.Serializer):
    """The transfer in the OpenAPI schema; responses are built by `transfer_out` (a hot path)."""

    id = serializers.UUIDField()
    amount_minor = serializers.IntegerField()
    currency = serializers.CharField()
    status = serializers.CharField()
    failure_reason = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"] = serializers.UUIDField(source="payer_id")
        fields["to"] = serializers.UUIDField(source="payee_id")
        fields["status_history"] = TransferEventOut(many=True, help_text="Every transition, oldest first.")
        return fields


def _iso(value: datetime) -> str:
    # As DRF's DateTimeField renders it (UTC as "Z"), so every endpoint shows the same text.
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def transfer_out(transfer: Transfer, events: list[Event] | None = None) -> dict[str, Any]:
    """The transfer as the API shows it (the shape of TransferOut, built directly: this is a hot path)."""
    body: dict[str, Any] = {
        "id": str(transfer.id),
        "amount_minor": transfer.amount_minor,
        "currency": transfer.currency,
        "status": transfer.status,
        "failure_reason": transfer.failure_reason,
        "created_at": _iso(transfer.created_at),
        "updated_at": _iso(transfer.updated_at),
        "from": str(transfer.payer_id),
        "to": str(transfer.payee_id),
    }
    if events is not None:
        body["status_history"] = [{"status": e.to_status, "reason": e.reason, "at": _iso(e.at)} for e in events]
    return body


class BalanceOut(serializers.Serializer):
    wallet_id = serializers.UUIDField()
    currency = serializers.CharField()
    posted = serializers.IntegerField(help_text="Balance counting settled movements only.")
    pending_out = serializers.IntegerField(help_text="Debited by transfers not yet completed or refunded.")
    available = serializers.IntegerField(help_text="What the wallet can pay now: posted - pending_out.")


class TransferBatchItemIn(TransferCreateIn):
    idempotency_key = serializers.CharField(max_length=255, help_text="This item's own Idempotency-Key.")


class TransferBatchIn(serializers.Serializer):
    transfers = TransferBatchItemIn(many=True, help_text="1 to 1,000 transfers.")


class ItemErrorOut(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)


class TransferBatchResultOut(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the item in the request.")
    outcome = serializers.ChoiceField(["accepted", "replayed", "rejected"])
    status = serializers.IntegerField(help_text="The HTTP status the single endpoint would have answered.")
    transfer = TransferOut(allow_null=True)
    error = ItemErrorOut(allow_null=True)


class TransferBatchOut(serializers.Serializer):
    results = TransferBatchResultOut(many=True)
