"""Small pieces shared by the API views: strict integers, idempotency keys, cursors."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema_field
from rest_framework import parsers, serializers
from rest_framework.exceptions import ParseError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request

from apps.common.errors import IdempotencyKeyInvalid, IdempotencyKeyMissing, InvalidRequest
from apps.sharding.fence import retry_while_fenced

MAX_MINOR_AMOUNT = 2**63 - 1  # PostgreSQL BIGINT


class StrictIntegerField(serializers.IntegerField):
    """An integer given as a JSON integer: no strings, floats or booleans, so no rounding."""

    default_error_messages = {"not_integer": "Must be a JSON integer in minor units (e.g. 5000 for 50.00)."}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("not_integer")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON `true` or `false`: no 0/1, no "yes", as the schema says."""

    default_error_messages = {"not_boolean": "Must be a JSON boolean: true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("not_boolean")
        return data


# Text a client sends us: any Unicode but NUL and lone surrogates (PostgreSQL stores neither).
TEXT_PATTERN = r"^[^\x00\ud800-\udfff]*$"


@extend_schema_field({"type": "string", "pattern": TEXT_PATTERN})
class StrictTextField(serializers.CharField):
    """A JSON string: no number or boolean turned into text, as the schema says."""

    default_error_messages = {"not_text": "Must be a JSON string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_text")
        return str(super().to_internal_value(data))


class AmountField(StrictIntegerField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_MINOR_AMOUNT)
        super().__init__(**kwargs)


def stored_answer(status: int, body: str, *, replayed: bool = False) -> HttpResponse:
    """A key's answer as the stored JSON text itself, so every replay is byte-identical to the first
    (marked `Idempotent-Replayed`)."""
    response = HttpResponse(body, status=status, content_type="application/json")
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def idempotency_key(request: Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise IdempotencyKeyMissing(param="Idempotency-Key")
    if not 1 <= len(key) <= 255 or not all(32 <= ord(ch) < 127 for ch in key):
        raise IdempotencyKeyInvalid(param="Idempotency-Key")
    return key


def parse_aware_datetime(value: object) -> datetime | None:
    """An ISO 8601 date-time with its offset (RFC 3339 allows a lower-case "t" and "z"), or None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def page_limit(request: Request, default: int = 20, maximum: int = 100) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise InvalidRequest(f"limit must be an integer from 1 to {maximum}.", param="limit")
    return int(raw)


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def decode_cursor(request: Request) -> Any:
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        raise InvalidRequest("cursor is not one this API returned.", param="cursor") from None


def decode_uuid_cursor(request: Request) -> uuid.UUID | None:
    """The cursor of an id-ordered list (ids are time-ordered UUIDs), or None for the first page."""
    cursor = decode_cursor(request)
    try:
        return uuid.UUID(cursor) if cursor is not None else None
    except (TypeError, ValueError, AttributeError):
        raise InvalidRequest("cursor is not one this API returned.", param="cursor") from None


def page(items: list[Any], limit: int, cursor_of: Any, render: Any) -> dict[str, Any]:
    """Render a page fetched with limit + 1 rows: the extra row only says there is more."""
    has_more = len(items) > limit
    items = items[:limit]
    return {
        "data": [render(item) for item in items],
        "has_more": has_more,
        "next_cursor": encode_cursor(cursor_of(items[-1])) if has_more else None,
    }


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser; a body nested deeper than Python's decoder goes is invalid JSON too
    (the decoder raises RecursionError, which DRF does not catch: it would be a 500)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None


class JSONOnlyNegotiation(DefaultContentNegotiation):
    """Our API views render JSON only: skip parsing the Accept header for them (a hot path).

    Views with several renderers (the OpenAPI schema and docs) negotiate as usual.
    """

    def select_renderer(self, request: Request, renderers: Any, format_suffix: str | None = None) -> Any:
        if len(renderers) == 1:
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)


Handler = TypeVar("Handler", bound=Callable[..., Any])


def waits_out_moves(handler: Handler) -> Handler:
    """A write endpoint that waits while its buckets switch shards, then runs on the new owner.

    A refused write committed nothing and every write endpoint is idempotent by key, so the
    handler runs again as the client's own retry would. Past SHARD_MOVE_WAIT_SECONDS the
    client gets 503 `shard_moving` and retries with the same key.
    """

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return retry_while_fenced(lambda: handler(*args, **kwargs), wait_seconds=settings.SHARD_MOVE_WAIT_SECONDS)

    return wrapper  # type: ignore[return-value]
