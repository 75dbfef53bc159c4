"""The OpenAPI schema's shared pieces (drf-spectacular): error responses with their codes per
status, pagination envelopes, constrained parameters and fields, response headers and links.

Views name these in `@extend_schema(...)`; nothing here runs while serving a request. The
contract tests (tests/contract/) hold every response the test suite and the fuzzer receive
against the generated schema, so what is declared here has to be what the API does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema_field
from rest_framework import serializers

from apps.common.errors import DomainError, IdempotencyKeyInvalid, IdempotencyKeyMissing, InvalidRequest

# What `apps.sharding.ids.parse_id` accepts, in its canonical text form: a UUIDv7.
ID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
# 1-255 printable ASCII characters. HTTP strips a header value's leading and trailing spaces,
# so a key sent as a header neither starts nor ends with one.
HEADER_KEY_PATTERN = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$"
BODY_KEY_PATTERN = r"^[\x20-\x7E]+$"


# --- errors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorCode:
    """One documented error: its HTTP status, its stable code and when an operation answers it."""

    status: int
    code: str
    when: str

    @classmethod
    def of(cls, error: type[DomainError], when: str) -> ErrorCode:
        return cls(error.status, error.code, when)

    def because(self, when: str) -> ErrorCode:
        return replace(self, when=when)


INVALID_JSON = ErrorCode(400, "invalid_json", "the body is not JSON")
PARAMETER_MISSING = ErrorCode(400, "parameter_missing", "a required field is missing (`param` names it)")
PARAMETER_INVALID = ErrorCode(400, "parameter_invalid", "the body is not a JSON object, or a field is malformed")
INVALID_AMOUNT = ErrorCode(400, "invalid_amount", "`amount_minor` is not a JSON integer in 1..2^63-1")
UNSUPPORTED_CURRENCY = ErrorCode(400, "unsupported_currency", "`currency` is not an ISO 4217 code")
INVALID_PAGE = ErrorCode.of(InvalidRequest, "`limit` is not an integer in 1..100, or `cursor` is not one we returned")
IDEMPOTENCY_KEY_MISSING = ErrorCode.of(IdempotencyKeyMissing, "no `Idempotency-Key` header")
IDEMPOTENCY_KEY_INVALID = ErrorCode.of(IdempotencyKeyInvalid, "`Idempotency-Key` is not 1-255 printable ASCII")
NOT_FOUND = ErrorCode(404, "not_found", "the id does not fit in one path segment (e.g. it holds a `/`): no such URL")
SERVICE_UNAVAILABLE = ErrorCode(
    503, "service_unavailable", "a database is down or the connection dropped: retry, with the same Idempotency-Key"
)
SHARD_MOVING = ErrorCode(
    503, "shard_moving", "the wallet's buckets stayed paused for a move between shards: retry with the same key"
)
UNSUPPORTED_MEDIA_TYPE = ErrorCode(415, "unsupported_media_type", "the body is not sent as `application/json`")
METHOD_NOT_ALLOWED = ErrorCode(405, "method_not_allowed", "the URL does not take this method")
BODY_TOO_LARGE = ErrorCode(
    413, "body_too_large", "the declared body is larger than the deployment accepts (2 MiB by default)"
)
RATE_LIMITED = ErrorCode(
    429, "rate_limited", "this API key sent more requests than its rate limit: retry after `Retry-After` seconds"
)
AUTHENTICATION = (
    ErrorCode(401, "authentication_required", "no `Authorization` header"),
    ErrorCode(401, "authentication_failed", "not `Authorization: Bearer <key>`, or an unknown or revoked key"),
)

ERROR_COMPONENTS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "description": "Every error has this shape; branch on `error.code`, which is stable.",
        "properties": {"error": {"$ref": "#/components/schemas/ErrorDetail"}},
        "required": ["error"],
    },
    "ErrorDetail": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "Stable machine code; each response lists its possible codes."},
            "message": {"type": "string", "description": "For people; may change."},
            "param": {
                "type": "string",
                "nullable": True,
                "description": "The field, query parameter or header at fault, if one is.",
            },
        },
        "required": ["code", "message", "param"],
    },
}

# Headers that go with an error status wherever it is answered.
ERROR_HEADERS: dict[str, dict[str, dict[str, Any]]] = {
    "401": {
        "WWW-Authenticate": {
            "required": True,
            "schema": {"type": "string"},
            "description": 'How to authenticate: `Bearer realm="api"`.',
        }
    },
    "405": {"Allow": {"required": True, "schema": {"type": "string"}, "description": "The methods this URL takes."}},
    "429": {
        "Retry-After": {
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
            "description": "Seconds until the key's rate limit lets a request through.",
        }
    },
    "503": {
        "Retry-After": {
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
            "description": "Seconds to wait before retrying.",
        }
    },
}


def _error_response(codes: list[ErrorCode]) -> OpenApiResponse:
    names = sorted({c.code for c in codes})
    narrowed = {"properties": {"error": {"properties": {"code": {"type": "string", "enum": names}}}}}
    description = "\n".join(f"- `{c.code}`: {c.when}" for c in codes)
    return OpenApiResponse({"allOf": [{"$ref": "#/components/schemas/Error"}, narrowed]}, description=description)


def error_responses(*codes: ErrorCode) -> dict[int, OpenApiResponse]:
    """Responses for the given error codes, plus what every operation can answer (401, 413, 429, 503)."""
    by_status: dict[int, list[ErrorCode]] = defaultdict(list)
    for code in (*codes, *AUTHENTICATION, BODY_TOO_LARGE, RATE_LIMITED, SERVICE_UNAVAILABLE, SHARD_MOVING):
        if code.code not in {c.code for c in by_status[code.status]}:
            by_status[code.status].append(code)
    return {status: _error_response(by_status[status]) for status in sorted(by_status)}


# JSON request bodies: not JSON, not an object, or not sent as JSON.
JSON_BODY_ERRORS = (INVALID_JSON, PARAMETER_INVALID, UNSUPPORTED_MEDIA_TYPE)


# --- parameters, headers, fields ------------------------------------------------------------


def id_parameter(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(
        name,
        {"type": "string", "format": "uuid", "pattern": ID_PATTERN},
        OpenApiParameter.PATH,
        description=description,
    )


PAGE_PARAMETERS = [
    OpenApiParameter(
        "limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, description="Page size."
    ),
    OpenApiParameter(
        "cursor",
        {"type": "string", "minLength": 1},
        description="The `next_cursor` of the previous page (opaque); absent for the first page.",
    ),
]

IDEMPOTENCY_KEY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 255, "pattern": HEADER_KEY_PATTERN},
    OpenApiParameter.HEADER,
    required=True,
    description=(
        "1-255 printable ASCII characters, unique per request. Repeating a request with the same key and "
        "body replays the first answer (with `Idempotent-Replayed: true`) and moves no money again."
    ),
)


def replayed_header(*statuses: int) -> OpenApiParameter:
    """`Idempotent-Replayed: true` on the responses that can be a stored answer sent again."""
    return OpenApiParameter(
        "Idempotent-Replayed",
        {"type": "string", "enum": ["true"]},
        OpenApiParameter.HEADER,
        response=list(statuses),
        description="Present, as `true`, when this is the stored answer to an earlier request with the same key.",
    )


@extend_schema_field({"type": "string", "pattern": CURRENCY_PATTERN, "example": "USD"})
class CurrencyField(serializers.CharField):
    """An ISO 4217 code in the schema; validation is the serializer's (or the view's) own."""


@extend_schema_field({"type": "string", "format": "uuid", "pattern": ID_PATTERN})
class IdField(serializers.UUIDField):
    """An id this API issued (a UUIDv7), in the schema."""


def page_of(
    item: type[serializers.Serializer] | serializers.Field, name: str, what: str
) -> type[serializers.Serializer]:
    """The envelope of a cursor-paginated list: a component named `name` with `item` rows (or,
    for rows of several shapes, the list field itself)."""
    rows = item if isinstance(item, serializers.Field) else item(many=True, help_text=f"{what}, newest first.")
    fields = {
        "data": rows,
        "has_more": serializers.BooleanField(help_text="Whether another page follows."),
        "next_cursor": serializers.CharField(
            allow_null=True, help_text="Pass as `cursor` for the next page; null on the last page."
        ),
    }
    return type(name, (serializers.Serializer,), {"__doc__": f"A page of {what.lower()}.", **fields})


# --- links ----------------------------------------------------------------------------------


def link(operation_id: str, description: str, *, body: dict[str, str] | None = None, **path: str) -> dict[str, Any]:
    """An OpenAPI link: `path` maps the target's path parameters to runtime expressions."""
    definition: dict[str, Any] = {"operationId": operation_id, "description": description}
    if path:
        definition["parameters"] = {f"path.{name}": expression for name, expression in path.items()}
    if body:
        definition["requestBody"] = body
    return definition


def next_page_link(operation_id: str, **path: str) -> dict[str, dict[str, Any]]:
    """The link from a page to the next one (its `next_cursor` is null on the last page)."""
    parameters = {f"path.{name}": expression for name, expression in path.items()}
    parameters["query.cursor"] = "$response.body#/next_cursor"
    return {"NextPage": {"operationId": operation_id, "description": "The next page.", "parameters": parameters}}


def response_links(links: dict[str, dict[str, Any]], *statuses: int) -> dict[str, Any]:
    """For `@extend_schema(extensions=...)`: `postprocess` moves these links onto the responses."""
    return {"x-response-links": {str(status): links for status in statuses}}


# --- the finishing pass ---------------------------------------------------------------------


def postprocess(result: dict[str, Any], generator: Any, **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular hook: add the error components, the headers of error statuses, and the
    links declared with `response_links` (each must name an operation that exists)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(ERROR_COMPONENTS)
    operations = {
        operation["operationId"]: operation
        for path_item in result.get("paths", {}).values()
        for operation in path_item.values()
    }
    for operation in operations.values():
        responses = operation["responses"]
        for status, headers in ERROR_HEADERS.items():
            if status in responses:
                responses[status].setdefault("headers", {}).update(headers)
        for status, links in operation.pop("x-response-links", {}).items():
            unknown = {target["operationId"] for target in links.values()} - set(operations)
            if status not in responses or unknown:
                raise ValueError(f"{operation['operationId']}: links from {status} to unknown {unknown or status}")
            responses[status]["links"] = links
    return result
