from __future__ import annotations

from typing import Any

from rest_framework import serializers

from apps.common.api import AmountField
from apps.ledger.currencies import is_supported_currency
from apps.ledger.models import LedgerEntry, Wallet
from apps.ledger.services import AppliedEntry


class WalletCreateIn(serializers.Serializer):
    currency = serializers.CharField(help_text="ISO 4217 code, e.g. USD.")

    def validate_currency(self, value: str) -> str:
        if not is_supported_currency(value):
            raise serializers.ValidationError(f"{value!r} is not an ISO 4217 currency code (e.g. USD, EUR).")
        return value


class MovementIn(serializers.Serializer):
    amount_minor = AmountField(help_text="Positive integer in minor units (cents for USD).")


class WalletOut(serializers.ModelSerializer):
    class Meta:
        model = Wallet
        fields = ["id", "currency", "status", "balance_minor", "created_at", "updated_at"]


class EntryOut(serializers.Serializer):
    id = serializers.UUIDField()
    wallet_id = serializers.UUIDField()
    seq = serializers.IntegerField()
    kind = serializers.CharField()
    reference = serializers.CharField()
    amount_minor = serializers.IntegerField()
    balance_after_minor = serializers.IntegerField()
    created_at = serializers.DateTimeField()


def entry_out(entry: AppliedEntry | LedgerEntry) -> dict[str, Any]:
    return EntryOut(entry).data
