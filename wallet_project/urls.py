"""Every route, in two surfaces: the public API's and the operators'.

One listener serves both in development and tests. With SHARDWALLET_OPS_BIND set (production's
default) each listener serves one surface (apps.common.surfaces), through `urls_public` and
`urls_ops`, and answers 404 for the other's paths.
"""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.common.health import health, live, ready
from apps.observability.views import metrics

# Both surfaces: a load balancer probes the API's port, a monitoring system the operators'.
health_patterns = [
    path("health", health, name="health"),
    path("health/live", live, name="health-live"),
    path("health/ready", ready, name="health-ready"),
]

api_patterns = [
    path("v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("v1/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("v1/", include("apps.transfers.api.urls")),
    path("v1/", include("apps.ledger.api.urls")),
    path("v1/", include("apps.holds.api.urls")),
    path("v1/", include("apps.refunds.api.urls")),
    path("v1/", include("apps.events.api.urls")),
    path("v1/", include("apps.webhooks.api.urls")),
]

ops_patterns = [
    path("metrics", metrics, name="metrics"),
    path("admin/operations/", include("apps.operators.urls")),
    path("admin/", admin.site.urls),
]

urlpatterns = health_patterns + ops_patterns + api_patterns

handler404 = "apps.common.errors.json_not_found"
handler500 = "apps.common.errors.json_server_error"
