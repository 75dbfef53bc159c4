from django.urls import path

from apps.holds.api import views

urlpatterns = [
    path("holds", views.HoldCollectionView.as_view(), name="holds"),
    path("holds/<str:hold_id>", views.HoldDetailView.as_view(), name="hold-detail"),
    path("holds/<str:hold_id>/capture", views.HoldCaptureView.as_view(), name="hold-capture"),
    path("holds/<str:hold_id>/void", views.HoldVoidView.as_view(), name="hold-void"),
]
