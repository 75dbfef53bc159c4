"""The audit trail of operator actions (on `default`), read-only."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from apps.operators.models import OperatorAction


@admin.register(OperatorAction)
class OperatorActionAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor_username", "action", "target", "shard", "outcome", "reason", "detail"]
    list_filter = ["action", "outcome", "created_at"]
    search_fields = ["target_id__exact", "actor_username", "reason", "subject"]
    ordering = ["-id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: OperatorAction | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: OperatorAction | None = None) -> bool:
        return False

    @admin.display(description="target")
    def target(self, record: OperatorAction) -> SafeString:
        if record.target_id is None:  # a command on a stream or a move: what it acted on, in words
            return format_html("{}", record.subject)
        model = "wallet" if record.action.endswith("wallet") else "transfer"
        app = "ledger" if model == "wallet" else "transfers"
        try:
            url = reverse(f"admin:{app}_{model}_change", args=[record.target_id])
        except NoReverseMatch:
            return format_html("{}", record.target_id)
        return format_html('<a href="{}">{} {}</a>', url, model, record.target_id)
