"""HTTP request latency by route pattern (bounded label values, unlike raw paths)."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from apps.observability.metrics import HTTP_REQUEST_SECONDS


class RequestMetricsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None else "unmatched"
        if route == "metrics":
            return response  # scrapes would dominate the histogram
        HTTP_REQUEST_SECONDS.labels(method=request.method, route=route, status=str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response
