from django.urls import path

from apps.transfers.api import views

urlpatterns = [
    path("transfers", views.TransferCollectionView.as_view(), name="transfers"),
    path("transfers/batch", views.TransferBatchView.as_view(), name="transfers-batch"),
    path("transfers/<str:transfer_id>", views.TransferDetailView.as_view(), name="transfer-detail"),
    path("wallets/<str:wallet_id>/transfers", views.WalletTransferListView.as_view(), name="wallet-transfers"),
    path("wallets/<str:wallet_id>/balance", views.WalletBalanceView.as_view(), name="wallet-balance"),
]
