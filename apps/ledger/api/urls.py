from django.urls import path

from apps.ledger.api import views

urlpatterns = [
    path("wallets", views.WalletCollectionView.as_view(), name="wallets"),
    path("wallets/<str:wallet_id>", views.WalletDetailView.as_view(), name="wallet-detail"),
    path("wallets/<str:wallet_id>/deposits", views.DepositView.as_view(), name="wallet-deposits"),
    path("wallets/<str:wallet_id>/withdrawals", views.WithdrawalView.as_view(), name="wallet-withdrawals"),
    path("wallets/<str:wallet_id>/entries", views.EntryListView.as_view(), name="wallet-entries"),
]
