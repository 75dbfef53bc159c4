"""Webhook endpoints: registered, changed and deleted by their client."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import ApiClient
from apps.webhooks import outbound
from apps.webhooks.errors import EndpointLimitReached, EndpointNotFound, UrlNotAllowed
from apps.webhooks.models import EndpointStatus, WebhookEndpoint
from apps.webhooks.signing import new_secret


def checked_url(url: str) -> str:
    try:
        outbound.check_literal(url)
    except outbound.RefusedUrl as exc:
        raise UrlNotAllowed(f"This URL cannot receive webhooks: {exc}.", param="url") from None
    return url


def endpoint_get(*, client_id: int, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(id=endpoint_id, client_id=client_id).first()
    if endpoint is None:
        raise EndpointNotFound(param="endpoint_id")
    return endpoint


def endpoint_create(*, client_id: int, url: str, event_types: list[str], description: str) -> WebhookEndpoint:
    checked_url(url)
    now = timezone.now()
    with transaction.atomic(using="default"):
        # The client's row serializes its registrations, so the cap holds under concurrency.
        ApiClient.objects.select_for_update().filter(id=client_id).first()
        if WebhookEndpoint.objects.filter(client_id=client_id).count() >= settings.WEBHOOK_MAX_ENDPOINTS_PER_CLIENT:
            raise EndpointLimitReached()
        return WebhookEndpoint.objects.create(
            client_id=client_id, url=url, event_types=sorted(set(event_types)), description=description,
            secret=new_secret(), created_at=now, updated_at=now,
        )  # fmt: skip


def endpoint_update(*, client_id: int, endpoint_id: uuid.UUID, changes: dict[str, Any]) -> WebhookEndpoint:
    """Change the URL, the event types, the description, or enable/disable it.

    Enabling a disabled endpoint clears its failure run: its pending deliveries are sent again.
    """
    if "url" in changes:
        checked_url(changes["url"])
    with transaction.atomic(using="default"):
        endpoint = WebhookEndpoint.objects.select_for_update().filter(id=endpoint_id, client_id=client_id).first()
        if endpoint is None:
            raise EndpointNotFound(param="endpoint_id")
        if "event_types" in changes:
            changes["event_types"] = sorted(set(changes["event_types"]))
        if changes.get("status") == EndpointStatus.ENABLED and endpoint.status != EndpointStatus.ENABLED:
            endpoint.disabled_reason, endpoint.failing_since, endpoint.consecutive_failures = "", None, 0
        elif changes.get("status") == EndpointStatus.DISABLED and endpoint.status != EndpointStatus.DISABLED:
            endpoint.disabled_reason = "disabled by its client"
        for name, value in changes.items():
            setattr(endpoint, name, value)
        endpoint.updated_at = timezone.now()
        endpoint.save()
        return endpoint


def endpoint_delete(*, client_id: int, endpoint_id: uuid.UUID) -> None:
    """Gone with its deliveries and attempts; events stay (GET /v1/events).

    The endpoint's row is locked first, as the dispatcher (inserting deliveries) and the sender
    (recording attempts) take it: the cascade then sees every row that refers to it."""
    with transaction.atomic(using="default"):
        locked = WebhookEndpoint.objects.select_for_update().filter(id=endpoint_id, client_id=client_id)
        if not locked.exists():
            raise EndpointNotFound(param="endpoint_id")
        locked.delete()
