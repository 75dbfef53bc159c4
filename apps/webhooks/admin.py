"""Operators see every client's webhook endpoints (enabled or disabled, and why) and each
delivery with its attempts. Read-only: endpoints are their clients' to change."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from apps.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ReadOnlyAdmin):
    list_display = ["id", "client", "url", "status", "consecutive_failures", "failing_since", "events_dropped"]
    list_filter = ["status"]
    search_fields = ["url", "client__name"]
    exclude = ["secret"]


class AttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = ["at", "status_code", "duration_ms", "error", "response_excerpt"]
    readonly_fields = ["at", "status_code", "duration_ms", "error", "response_excerpt"]
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["id", "endpoint", "event_type", "event_id", "status", "attempts", "next_attempt_at"]
    list_filter = ["status", "event_type"]
    search_fields = ["=event_id", "=object_id"]
    list_select_related = ["endpoint"]
    inlines = [AttemptInline]
