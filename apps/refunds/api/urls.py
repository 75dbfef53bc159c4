from django.urls import path

from apps.refunds.api import views

urlpatterns = [
    path("transfers/<str:transfer_id>/refunds", views.RefundCollectionView.as_view(), name="transfer-refunds"),
]
