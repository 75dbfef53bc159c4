from django.urls import path

from apps.webhooks.api import views

urlpatterns = [
    path("webhook_endpoints", views.EndpointCollectionView.as_view(), name="webhook-endpoints"),
    path("webhook_endpoints/<str:endpoint_id>", views.EndpointDetailView.as_view(), name="webhook-endpoint-detail"),
    path(
        "webhook_endpoints/<str:endpoint_id>/deliveries",
        views.DeliveryListView.as_view(),
        name="webhook-endpoint-deliveries",
    ),
]
