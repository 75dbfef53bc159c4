from __future__ import annotations

from rest_framework import serializers

from apps.common.openapi import IdField
from apps.events.models import EVENT_TYPES

_TYPES_HELP = "; ".join(f"`{name}`: {what}" for name, what in EVENT_TYPES.items())


class EventDataOut(serializers.Serializer):
    object = serializers.DictField(
        help_text=(
            "The object as the API renders it at the change: a transfer (`transfer.*` but `transfer.received`), "
            "a ledger entry (`transfer.received`, `deposit.succeeded`, `withdrawal.succeeded`), a wallet "
            "(`wallet.*`) or a hold (`hold.*`)."
        )
    )


class EventOut(serializers.Serializer):
    id = IdField(help_text="Unique and time-ordered: deduplicate deliveries by it.")
    type = serializers.ChoiceField(list(EVENT_TYPES), help_text=_TYPES_HELP)
    created_at = serializers.DateTimeField(help_text="When the change committed's transaction wrote it.")
    object_id = IdField(help_text="The id of `data.object`.")
    seq = serializers.IntegerField(
        min_value=1,
        help_text="1, 2, 3... per object: order one object's events by it (ids of one millisecond are unordered).",
    )
    data = EventDataOut()  # type: ignore[assignment]  # a field named `data`, as in the JSON
