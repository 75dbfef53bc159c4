"""Transfers in the admin, from every shard, with their history, the payee's outcome and refunds.
Read-only; re-drive and force-compensate are operator actions with an audit record."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from apps.operators.admin_actions import OperatorActionsMixin, OperatorActionSpec
from apps.operators.services import operator_compensate_transfer, operator_redrive_transfer
from apps.refunds.selectors import refund_list
from apps.sharding.admin import CurrencyFilter, ShardedModelAdmin, ShardFilter, money_html
from apps.sharding.routing import alias_for_id
from apps.transfers.models import PayeeCredit, Transfer
from apps.transfers.selectors import transfer_events


def _wallet_link(wallet_id: object) -> SafeString:
    return format_html('<a href="{}">{}</a>', reverse("admin:ledger_wallet_change", args=[wallet_id]), wallet_id)


def _transfer_link(transfer_id: object) -> SafeString:
    return format_html(
        '<a href="{}">{}</a>', reverse("admin:transfers_transfer_change", args=[transfer_id]), transfer_id
    )


@admin.register(Transfer)
class TransferAdmin(OperatorActionsMixin, ShardedModelAdmin):
    list_display = ["id", "client", "payer_id", "payee_id", "amount", "status", "failure_reason",
                    "attempts", "parked_at", "shard", "created_at"]  # fmt: skip
    list_filter = ["status", "failure_reason", CurrencyFilter, ("parked_at", admin.EmptyFieldListFilter), ShardFilter,
                   "created_at"]  # fmt: skip
    routed_id_fields = ("id", "payer_id")  # a transfer lives on its payer's shard
    client_field = "client_id"
    search_help_text = (
        "A transfer id or a paying wallet's id (goes to its shard), or an API client's name or id (every shard)."
        " Transfers received by a wallet: open the wallet."
    )
    fields = ["id", "shard", "client", "payer", "payee", "amount", "status", "failure_reason",
              "attempts", "last_error", "parked_at", "created_at", "updated_at", "description", "metadata",
              "payee_outcome",
              "history", "refund_of_link", "refunded", "refunds"]  # fmt: skip
    readonly_fields = ["shard", "client", "payer", "payee", "amount", "payee_outcome", "history", "refund_of_link",
                       "refunded", "refunds"]  # fmt: skip
    operator_actions = (
        OperatorActionSpec(
            name="redrive",
            label="Re-drive transfer",
            permission="operators.redrive_transfer",
            run=operator_redrive_transfer,
            target_kwarg="transfer_id",
            applies=lambda transfer: not transfer.is_terminal,
            explanation="Un-parks the transfer, resets its attempts and runs its saga again from its stored state.",
        ),
        OperatorActionSpec(
            name="compensate",
            label="Force-compensate transfer",
            permission="operators.compensate_transfer",
            run=operator_compensate_transfer,
            target_kwarg="transfer_id",
            applies=lambda transfer: not transfer.is_terminal,
            explanation="Ends the transfer without crediting the payee: a refusal (operator_compensated) is recorded"
            " on the payee's shard, then the payer is refunded and the transfer fails. If the payee was in fact"
            " already credited, the transfer is completed instead and nothing is refunded. Needs both shards.",
        ),
    )

    @admin.display(description="amount")
    def amount(self, transfer: Transfer) -> SafeString:
        return money_html(transfer.amount_minor, transfer.currency)

    @admin.display(description="payer")
    def payer(self, transfer: Transfer) -> SafeString:
        return _wallet_link(transfer.payer_id)

    @admin.display(description="payee")
    def payee(self, transfer: Transfer) -> SafeString:
        return _wallet_link(transfer.payee_id)

    @admin.display(description="payee's outcome (on the payee's shard)")
    def payee_outcome(self, transfer: Transfer) -> str:
        alias = alias_for_id(transfer.payee_id)
        if alias == alias_for_id(transfer.id):
            return "same shard: credited in the payer's transaction"
        credit = PayeeCredit.objects.using(alias).filter(transfer_id=transfer.id).first()
        if credit is None:
            return f"none recorded yet on {alias}"
        return f"{credit.outcome}{f' ({credit.reason})' if credit.reason else ''} at {credit.created_at} on {alias}"

    @admin.display(description="status history")
    def history(self, transfer: Transfer) -> SafeString:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (e.from_status or "", e.to_status, e.reason or "", e.created_at)
                for e in transfer_events(transfer_id=transfer.id)
            ),
        )
        return format_html("<table><tr><th>from</th><th>to</th><th>reason</th><th>at</th></tr>{}</table>", rows)

    @admin.display(description="refund of")
    def refund_of_link(self, transfer: Transfer) -> SafeString | str:
        if transfer.refund_of is None:
            return "-"
        return _transfer_link(transfer.refund_of)

    @admin.display(description="amount refunded (refunds not failed)")
    def refunded(self, transfer: Transfer) -> SafeString:
        return money_html(transfer.amount_refunded, transfer.currency)

    @admin.display(description="refunds (on this shard, beside the transfer)")
    def refunds(self, transfer: Transfer) -> SafeString | str:
        refunds = refund_list(original=transfer)
        if not refunds:
            return "none"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (_transfer_link(r.transfer_id), money_html(r.amount_minor, transfer.currency), r.status,
                 r.failure_reason or "", r.created_at)
                for r in refunds
            ),
        )  # fmt: skip
        head = "<tr><th>refund transfer</th><th>amount</th><th>status</th><th>reason</th><th>at</th></tr>"
        return format_html("<table>" + head + "{}</table>", rows)
