"""A request body over SHARDWALLET_API_MAX_BODY_BYTES is answered 413 before a byte of it is read.

The declared Content-Length decides: Django reads no more than it, so a body without one
(chunked) is read as empty, and one that lies about its length is cut at it. A negative or
malformed length is a 400. The backstop, DATA_UPLOAD_MAX_MEMORY_SIZE, is the same limit.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from apps.common.errors import error_body


class BodySizeLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        declared = request.META.get("CONTENT_LENGTH")
        if declared:
            if not declared.isdigit():
                message = "Content-Length must be a non-negative integer."
                return JsonResponse(error_body("parameter_invalid", message, "Content-Length"), status=400)
            limit = settings.API_MAX_BODY_BYTES
            if int(declared) > limit:
                message = f"The request body is {declared} bytes; at most {limit} are accepted."
                return JsonResponse(error_body("body_too_large", message), status=413)
        return self.get_response(request)
