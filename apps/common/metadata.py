"""`metadata` and `description`: the client's own notes on a wallet or a transfer.

Stripe's limits: up to 50 keys, keys up to 40 characters, values strings up to 500. Kept
as given and returned everywhere (API, events, audit store); we never act on them. One
check, used by the plain-Python transfer validation and by the DRF fields of wallets.
"""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.common.api import TEXT_PATTERN

MAX_KEYS = 50
MAX_KEY_LENGTH = 40
MAX_VALUE_LENGTH = 500
MAX_DESCRIPTION_LENGTH = 1000

# The API's rule for text (no NUL, no lone surrogate: PostgreSQL's jsonb and text store neither).
_STORABLE = re.compile(TEXT_PATTERN)


def metadata_problem(raw: object) -> str | None:
    """Why `raw` is not valid metadata (None: it is)."""
    if not isinstance(raw, dict):
        return "Must be a JSON object of string values."
    if len(raw) > MAX_KEYS:
        return f"At most {MAX_KEYS} keys."
    for key, value in raw.items():
        if not 1 <= len(key) <= MAX_KEY_LENGTH or not _STORABLE.match(key):
            return f"Keys are 1 to {MAX_KEY_LENGTH} characters (no NUL): {key[:MAX_KEY_LENGTH]!r}."
        if not isinstance(value, str):
            return f"Values are JSON strings: {key!r} is not."
        if len(value) > MAX_VALUE_LENGTH or not _STORABLE.match(value):
            return f"Values are at most {MAX_VALUE_LENGTH} characters (no NUL): {key!r} is not."
    return None


def description_problem(raw: object) -> str | None:
    """Why `raw` is not a valid description (None, or a string, is)."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        return "Must be a JSON string or null."
    if len(raw) > MAX_DESCRIPTION_LENGTH or not _STORABLE.match(raw):
        return f"At most {MAX_DESCRIPTION_LENGTH} characters (no NUL)."
    return None


METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": MAX_KEYS,
    # Keys of 1-40 characters: said in the description (OpenAPI 3.0 has no `propertyNames`).
    "additionalProperties": {"type": "string", "maxLength": MAX_VALUE_LENGTH, "pattern": TEXT_PATTERN},
    "description": f"Your own key-value notes: up to {MAX_KEYS} keys of 1 to {MAX_KEY_LENGTH} characters, string"
    f" values of up to {MAX_VALUE_LENGTH}. Returned as given; never acted on.",
}
DESCRIPTION_SCHEMA: dict[str, Any] = {
    "type": "string",
    "nullable": True,
    "maxLength": MAX_DESCRIPTION_LENGTH,
    "pattern": TEXT_PATTERN,
    "description": "Your own free text (null: none).",
}


@extend_schema_field(METADATA_SCHEMA)
class MetadataField(serializers.Field):
    def to_internal_value(self, data: Any) -> dict[str, str]:
        problem = metadata_problem(data)
        if problem:
            raise serializers.ValidationError(problem)
        return dict(data)

    def get_attribute(self, instance: Any) -> Any:
        # Stored as NULL when none were given; shown as {} (DRF would render a None as null).
        value = super().get_attribute(instance)
        return {} if value is None else value

    def to_representation(self, value: Any) -> dict[str, str]:
        return dict(value)


@extend_schema_field(DESCRIPTION_SCHEMA)
class DescriptionField(serializers.Field):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str | None:
        problem = description_problem(data)
        if problem:
            raise serializers.ValidationError(problem)
        return data

    def to_representation(self, value: Any) -> str | None:
        return value
