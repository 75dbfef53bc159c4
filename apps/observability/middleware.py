"""HTTP request latency by method and route pattern (bounded label values: unknown methods are
`other`, unlike raw paths a route is a pattern), and the
application's own time per request in a `Server-Timing: app;dur=<ms>` header when
SERVER_TIMING_HEADER is on (off in production by default): what `make bench` reads to tell
the API's work from the queueing in front of it."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from apps.observability.metrics import HTTP_REQUEST_SECONDS

# A label's values come from fixed sets: a client choosing the method must not grow the series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.server_timing = settings.SERVER_TIMING_HEADER

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None else "unmatched"
        if route == "metrics":
            return response  # scrapes would dominate the histogram
        elapsed = time.perf_counter() - started
        method = request.method if request.method in _METHODS else "other"
        HTTP_REQUEST_SECONDS.labels(method=method, route=route, status=str(response.status_code)).observe(elapsed)
        if self.server_timing:
            response["Server-Timing"] = f"app;dur={elapsed * 1000:.2f}"
        return response
