"""Holds in the admin, from every shard: find them, see their state and expiry, void one as an operator action."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from apps.holds.models import Hold, HoldStatus
from apps.operators.admin_actions import OperatorActionsMixin, OperatorActionSpec
from apps.operators.services import operator_void_hold
from apps.sharding.admin import CurrencyFilter, ShardedModelAdmin, ShardFilter, money_html


@admin.register(Hold)
class HoldAdmin(OperatorActionsMixin, ShardedModelAdmin):
    list_display = ["id", "client", "payer_id", "payee_id", "amount", "status", "expires_at", "shard", "created_at"]
    list_filter = ["status", CurrencyFilter, ShardFilter, "expires_at"]
    routed_id_fields = ("id", "payer_id")  # a hold lives on its payer's shard
    client_field = "client_id"
    search_help_text = "A hold id or a paying wallet's id (goes to its shard), or an API client's name or id."
    fields = ["id", "shard", "client", "payer", "payee_id", "amount", "status", "failure_reason", "captured_minor",
              "capture_transfer", "resolution_note", "expires_at", "resolved_at", "created_at",
              "updated_at"]  # fmt: skip
    readonly_fields = ["shard", "client", "payer", "amount", "capture_transfer"]
    operator_actions = (
        OperatorActionSpec(
            name="void",
            label="Void hold",
            permission="operators.void_hold",
            run=operator_void_hold,
            target_kwarg="hold_id",
            applies=lambda hold: hold.status == HoldStatus.HELD,
            explanation="Releases the held amount to the payer's available balance. A capture, void or expiry"
            " that commits first wins: then nothing changes and the action is recorded as refused.",
        ),
    )

    @admin.display(description="amount")
    def amount(self, hold: Hold) -> SafeString:
        return money_html(hold.amount_minor, hold.currency)

    @admin.display(description="payer")
    def payer(self, hold: Hold) -> SafeString:
        return format_html('<a href="{}">{}</a>', reverse("admin:ledger_wallet_change", args=[hold.payer_id]),
                           hold.payer_id)  # fmt: skip

    @admin.display(description="capture's transfer")
    def capture_transfer(self, hold: Hold) -> SafeString | str:
        if hold.transfer_id is None:
            return "-"
        url = reverse("admin:transfers_transfer_change", args=[hold.transfer_id])
        return format_html('<a href="{}">{}</a>', url, hold.transfer_id)
