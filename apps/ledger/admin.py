"""Wallets and ledger entries in the admin, from every shard. Read-only: money moves only
through services; the one write, freezing, is an operator action with an audit record."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from apps.ledger.models import LedgerEntry, Wallet, WalletStatus
from apps.ledger.selectors import entry_list
from apps.operators.admin_actions import OperatorActionsMixin, OperatorActionSpec
from apps.operators.services import operator_freeze_wallet, operator_unfreeze_wallet
from apps.sharding.admin import CurrencyFilter, ShardedModelAdmin, ShardFilter, money_html


@admin.register(Wallet)
class WalletAdmin(OperatorActionsMixin, ShardedModelAdmin):
    list_display = ["id", "client", "currency", "balance", "status", "shard", "created_at"]
    list_filter = ["status", CurrencyFilter, ShardFilter, "created_at"]
    client_field = "owner_id"
    fields = [
        "id", "shard", "client", "currency", "balance", "status", "last_entry_seq",
        "created_at", "updated_at", "description", "metadata", "links", "recent_entries",
    ]  # fmt: skip
    readonly_fields = ["shard", "client", "balance", "links", "recent_entries"]
    operator_actions = (
        OperatorActionSpec(
            name="freeze",
            label="Freeze wallet",
            permission="operators.freeze_wallet",
            run=operator_freeze_wallet,
            target_kwarg="wallet_id",
            applies=lambda wallet: wallet.status == WalletStatus.ACTIVE,
            explanation="A frozen wallet can neither pay nor receive: its payments are refused, and transfers "
            "to it fail with payee_frozen and refund their payer. Refunds still reach it.",
        ),
        OperatorActionSpec(
            name="unfreeze",
            label="Unfreeze wallet",
            permission="operators.freeze_wallet",
            run=operator_unfreeze_wallet,
            target_kwarg="wallet_id",
            applies=lambda wallet: wallet.status == WalletStatus.FROZEN,
            explanation="The wallet becomes active again: it can pay and receive.",
        ),
    )

    @admin.display(description="balance")
    def balance(self, wallet: Wallet) -> SafeString:
        return money_html(wallet.balance_minor, wallet.currency)

    @admin.display(description="see also")
    def links(self, wallet: Wallet) -> SafeString:
        entries = reverse("admin:ledger_ledgerentry_changelist")
        transfers = reverse("admin:transfers_transfer_changelist")
        return format_html(
            '<a href="{}?q={}">all ledger entries</a> · <a href="{}?q={}">transfers paid</a>'
            ' · <a href="{}?payee_id={}">transfers received</a>',
            entries, wallet.id, transfers, wallet.id, transfers, wallet.id,
        )  # fmt: skip

    @admin.display(description="latest entries")
    def recent_entries(self, wallet: Wallet) -> SafeString:
        entries = entry_list(wallet_id=wallet.id, before_seq=None, limit=10)
        if not entries:
            return format_html("{}", "none")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    e.seq,
                    e.kind,
                    money_html(e.amount_minor, wallet.currency),
                    money_html(e.balance_after_minor, wallet.currency),
                    e.reference,
                    e.created_at,
                )
                for e in entries
            ),
        )
        return format_html(
            "<table><tr><th>seq</th><th>kind</th><th>amount</th><th>balance after</th><th>reference</th>"
            "<th>at</th></tr>{}</table>",
            rows,
        )


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ShardedModelAdmin):
    list_display = ["id", "wallet_link", "seq", "kind", "amount", "balance_after", "reference", "shard",
                    "created_at"]  # fmt: skip
    list_filter = ["kind", ShardFilter, "created_at"]
    routed_id_fields = ("id", "wallet_id")  # an entry lives with its wallet
    fanout_exact_fields = ("reference",)
    search_help_text = "An entry or wallet id (goes to its shard), or an exact reference (every shard)."
    fields = ["id", "shard", "wallet_link", "seq", "kind", "amount", "balance_after", "reference",
              "created_at"]  # fmt: skip
    readonly_fields = ["shard", "wallet_link", "amount", "balance_after"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The wallet (same shard: a real foreign key) brings the currency the amounts are in.
        return super().get_queryset(request).select_related("wallet")

    @admin.display(description="amount")
    def amount(self, entry: LedgerEntry) -> SafeString:
        return money_html(entry.amount_minor, entry.wallet.currency)

    @admin.display(description="balance after")
    def balance_after(self, entry: LedgerEntry) -> SafeString:
        return money_html(entry.balance_after_minor, entry.wallet.currency)

    @admin.display(description="wallet")
    def wallet_link(self, entry: LedgerEntry) -> SafeString:
        url = reverse("admin:ledger_wallet_change", args=[entry.wallet_id])
        return format_html('<a href="{}">{}</a>', url, entry.wallet_id)
