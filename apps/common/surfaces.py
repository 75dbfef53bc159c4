"""Which surface a request reaches: the public API's or the operators', by the listener it came in on.

With SHARDWALLET_OPS_BIND set, `run_api` has gunicorn listen on it besides the API's address.
A request on that port sees the operators' routes only (the admin, the operations page,
/metrics); any other sees the API's only, so the admin is a 404 on the public address however
the request is phrased. The port is SERVER_PORT, which gunicorn takes from the listening socket,
never from the request's headers. Without an operators' bind one listener serves both.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from wallet_project.environment import bind_port

PUBLIC_URLCONF = "wallet_project.urls_public"
OPS_URLCONF = "wallet_project.urls_ops"


class SurfaceMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.ops_port = bind_port(settings.OPS_BIND) if settings.OPS_BIND else None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.ops_port is not None:
            on_ops_port = request.META.get("SERVER_PORT") == self.ops_port
            request.urlconf = OPS_URLCONF if on_ops_port else PUBLIC_URLCONF
        return self.get_response(request)
