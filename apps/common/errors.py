"""One error shape for the whole API: {"error": {"code", "message", "param"}} with stable codes."""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError, close_old_connections
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from apps.sharding.fence import BucketsMoving, is_fence_refusal

log = logging.getLogger(__name__)


class DomainError(Exception):
    """A business rule said no. Subclasses carry a stable machine code and an HTTP status."""

    code = "error"
    status = 400
    default_message = "The request could not be processed."

    def __init__(self, message: str | None = None, *, param: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.param = param


class InvalidRequest(DomainError):
    code = "invalid_request"
    status = 400


class ParameterInvalid(DomainError):
    """A well-formed field whose value cannot be taken as it is (the same code as a malformed one)."""

    code = "parameter_invalid"
    status = 400


class IdempotencyKeyMissing(DomainError):
    code = "idempotency_key_missing"
    status = 400
    default_message = "This request needs an Idempotency-Key header (1 to 255 printable ASCII characters)."


class IdempotencyKeyInvalid(DomainError):
    code = "idempotency_key_invalid"
    status = 400
    default_message = "The Idempotency-Key header must be 1 to 255 printable ASCII characters."


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"
    status = 422
    default_message = "This Idempotency-Key was already used with a different request."


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "param": param}}


# Field-level validation codes that deserve their own stable error code.
_FIELD_ERROR_CODES = {"amount_minor": "invalid_amount", "currency": "unsupported_currency"}


def _first_field_error(detail: Any, prefix: str = "") -> tuple[str | None, Any]:
    if isinstance(detail, dict):
        for field, sub in detail.items():
            name = field if field != "non_field_errors" else None
            param = f"{prefix}.{name}" if prefix and name else (name or prefix or None)
            return _first_field_error(sub, param or "") if isinstance(sub, dict) else (param, sub)
    return (prefix or None, detail)


def _validation_response(exc: drf.ValidationError) -> Response:
    param, detail = _first_field_error(exc.detail)
    first = detail[0] if isinstance(detail, list) and detail else detail
    drf_code = getattr(first, "code", "invalid")
    field = param.rsplit(".", 1)[-1] if param else None
    if drf_code == "required":
        code = "parameter_missing"
    elif field in _FIELD_ERROR_CODES:
        code = _FIELD_ERROR_CODES[field]
    else:
        code = "parameter_invalid"
    return Response(error_body(code, str(first), param), status=400)


_DRF_CODES: list[tuple[type[drf.APIException], str]] = [
    (drf.ParseError, "invalid_json"),
    (drf.NotAuthenticated, "authentication_required"),
    (drf.AuthenticationFailed, "authentication_failed"),
    (drf.PermissionDenied, "permission_denied"),
    (drf.NotFound, "not_found"),
    (drf.MethodNotAllowed, "method_not_allowed"),
    (drf.NotAcceptable, "not_acceptable"),
    (drf.UnsupportedMediaType, "unsupported_media_type"),
    (drf.Throttled, "rate_limited"),
]


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, BucketsMoving) or is_fence_refusal(exc):
        # The request's buckets are switching shards: nothing was committed; the switch takes
        # about a second. The same Idempotency-Key then completes the request.
        body = error_body("shard_moving", "The wallet's data is moving between shards; retry with the same key.")
        return Response(body, status=503, headers={"Retry-After": "1"})
    if isinstance(exc, OperationalError | InterfaceError):
        # A shard (or the control database) is down or the connection dropped. Nothing was
        # committed or the commit is durable; either way a retry with the same key is safe.
        # The client gets the code; the cause (which server, lock timeout or lost connection) goes to the log.
        log.warning("database unavailable: %s: %s", type(exc).__name__, str(exc).strip()[:500])
        close_old_connections()
        body = error_body("service_unavailable", "A database is unavailable; retry with the same Idempotency-Key.")
        return Response(body, status=503, headers={"Retry-After": "1"})
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.param), status=exc.status)
    if isinstance(exc, drf.ValidationError):
        return _validation_response(exc)
    if isinstance(exc, Http404):
        return Response(error_body("not_found", "Not found."), status=404)
    if isinstance(exc, drf.APIException):
        code = next((c for cls, c in _DRF_CODES if isinstance(exc, cls)), "invalid_request")
        response = Response(error_body(code, str(exc.detail)), status=exc.status_code)
        if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
            response["WWW-Authenticate"] = 'Bearer realm="api"'
        if isinstance(exc, drf.Throttled):
            response.data = error_body(code, "Too many requests for this API key; retry after Retry-After seconds.")
            response["Retry-After"] = str(int(getattr(exc, "wait", None) or 1))
        return response
    return None


def json_not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", f"No endpoint at {request.path}."), status=404)


def json_server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("internal_error", "Internal error; the request may be retried."), status=500)
