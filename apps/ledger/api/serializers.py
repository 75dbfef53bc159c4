from __future__ import annotations

from typing import Any

from rest_framework import serializers

from apps.common.api import MAX_MINOR_AMOUNT, AmountField, StrictBooleanField
from apps.common.metadata import DescriptionField, MetadataField
from apps.common.openapi import CurrencyField, IdField
from apps.ledger.currencies import is_supported_currency
from apps.ledger.models import AcceptsFrom, EntryKind, LedgerEntry, Wallet
from apps.ledger.services import AppliedEntry

_ACCEPTS_FROM_ERRORS: dict[str, Any] = {"invalid_choice": '"{input}" is not one of: any, same_client.'}
_ACCEPTS_FROM_HELP = (
    "Whose transfers the wallet takes: `any` client's, or only yours (`same_client`). Another client's transfer"
    " to a `same_client` wallet fails as `payee_not_found`, as if the wallet did not exist; refunds of what"
    " the wallet paid are always taken."
)


class WalletCreateIn(serializers.Serializer):
    currency = CurrencyField(help_text="ISO 4217 code, e.g. USD.")
    payer_may_refund = StrictBooleanField(
        required=False,
        default=False,
        help_text="Whether the client that paid a transfer into this wallet may refund it from here (default no).",
    )
    accepts_from = serializers.ChoiceField(
        AcceptsFrom.choices,
        required=False,
        default=AcceptsFrom.ANY,
        error_messages=_ACCEPTS_FROM_ERRORS,
        help_text=_ACCEPTS_FROM_HELP + " Default `any`.",
    )
    description = DescriptionField(required=False)
    metadata = MetadataField(required=False)

    def validate_currency(self, value: str) -> str:
        if not is_supported_currency(value):
            raise serializers.ValidationError(f"{value!r} is not an ISO 4217 currency code (e.g. USD, EUR).")
        return value


class WalletUpdateIn(serializers.Serializer):
    payer_may_refund = StrictBooleanField(
        required=False,
        help_text="Whether the client that paid a transfer into this wallet may refund it from here (absent: as is).",
    )
    accepts_from = serializers.ChoiceField(
        AcceptsFrom.choices,
        required=False,
        error_messages=_ACCEPTS_FROM_ERRORS,
        help_text=_ACCEPTS_FROM_HELP + " Absent: as is.",
    )
    description = DescriptionField(required=False, help_text="Replaces the description (null: none; absent: as is).")
    metadata = MetadataField(
        required=False,
        help_text='Merged into the metadata: each key given is set, a key given as "" is removed (absent: as is).',
    )


class MovementIn(serializers.Serializer):
    amount_minor = AmountField(help_text="Positive integer in minor units (cents for USD).")


class WalletOut(serializers.ModelSerializer):
    id = IdField(read_only=True)
    currency = CurrencyField(read_only=True)
    balance_minor = serializers.IntegerField(read_only=True, min_value=0, max_value=MAX_MINOR_AMOUNT)
    description = DescriptionField(read_only=True)
    metadata = MetadataField(read_only=True)

    class Meta:
        model = Wallet
        fields = ["id", "currency", "status", "balance_minor", "payer_may_refund", "accepts_from", "created_at",
                  "updated_at", "description", "metadata"]  # fmt: skip
        read_only_fields = fields


class EntryOut(serializers.Serializer):
    id = IdField()
    wallet_id = IdField()
    seq = serializers.IntegerField(min_value=1, help_text="1, 2, 3... per wallet, in the order entries were applied.")
    kind = serializers.ChoiceField(EntryKind.choices)
    reference = serializers.CharField(help_text="The deposit's or withdrawal's Idempotency-Key, or the transfer id.")
    amount_minor = serializers.IntegerField(help_text="Signed: positive adds to the balance.")
    balance_after_minor = serializers.IntegerField(min_value=0)
    created_at = serializers.DateTimeField()


def entry_out(entry: AppliedEntry | LedgerEntry) -> dict[str, Any]:
    return EntryOut(entry).data
