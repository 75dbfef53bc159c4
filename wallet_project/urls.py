from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.common.health import health, live, ready
from apps.observability.views import metrics

urlpatterns = [
    path("health", health, name="health"),
    path("health/live", live, name="health-live"),
    path("health/ready", ready, name="health-ready"),
    path("metrics", metrics, name="metrics"),
    path("admin/operations/", include("apps.operators.urls")),
    path("admin/", admin.site.urls),
    path("v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("v1/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("v1/", include("apps.transfers.api.urls")),
    path("v1/", include("apps.ledger.api.urls")),
    path("v1/", include("apps.holds.api.urls")),
    path("v1/", include("apps.refunds.api.urls")),
    path("v1/", include("apps.events.api.urls")),
    path("v1/", include("apps.webhooks.api.urls")),
]

handler404 = "apps.common.errors.json_not_found"
handler500 = "apps.common.errors.json_server_error"
