"""The holds endpoints' bodies, for the OpenAPI schema (responses are rendered by apps.holds.rendering)."""

from __future__ import annotations

from rest_framework import serializers

from apps.common.api import AmountField, StrictTextField
from apps.common.openapi import CurrencyField, IdField
from apps.holds.models import HoldStatus
from apps.transfers.models import FailureReason


class HoldCreateIn(serializers.Serializer):
    amount_minor = AmountField(help_text="Positive integer in minor units, reserved on the paying wallet.")
    currency = CurrencyField(help_text="ISO 4217 code: the paying wallet's currency.")
    expires_at = serializers.DateTimeField(
        required=False,
        help_text="When an uncaptured hold is released (ISO 8601, in the future). Default 7 days, at most 30"
        " (SHARDWALLET_HOLD_DEFAULT_SECONDS, SHARDWALLET_HOLD_MAX_SECONDS).",
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"] = IdField(help_text="The paying wallet: one of yours.")
        fields["to"] = IdField(help_text="Who a capture pays: any active wallet of the same currency.")
        return fields


class HoldCaptureIn(serializers.Serializer):
    amount_minor = AmountField(required=False, help_text="At most the amount held; default all of it.")


class HoldVoidIn(serializers.Serializer):
    reason = StrictTextField(required=False, max_length=500, help_text="Kept with the hold.")


class HoldOut(serializers.Serializer):
    id = IdField()
    amount_minor = AmountField()
    currency = CurrencyField()
    status = serializers.ChoiceField(
        HoldStatus.choices,
        help_text="held, then captured, voided or expired (each at most once); failed: refused at creation.",
    )
    failure_reason = serializers.ChoiceField(FailureReason.choices, allow_null=True, help_text="Set when failed.")
    captured_minor = serializers.IntegerField(allow_null=True, min_value=1, help_text="What the capture paid.")
    transfer_id = IdField(allow_null=True, help_text="The capture's transfer (GET /v1/transfers/{id}).")
    expires_at = serializers.DateTimeField()
    resolved_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"] = IdField(help_text="The paying wallet.")
        fields["to"] = IdField(help_text="The wallet a capture pays.")
        return fields
