"""Reads of a client's webhook endpoints and their deliveries (control database)."""

from __future__ import annotations

import uuid

from apps.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

RECENT_ATTEMPTS = 20


def endpoint_list(*, client_id: int) -> list[WebhookEndpoint]:
    return list(WebhookEndpoint.objects.filter(client_id=client_id).order_by("-created_at", "-id"))


def delivery_list(*, endpoint: WebhookEndpoint, before_id: int | None, limit: int) -> list[WebhookDelivery]:
    """Newest first, each with its last attempts (oldest first) in `recent_attempts`."""
    deliveries = WebhookDelivery.objects.filter(endpoint=endpoint)
    if before_id is not None:
        deliveries = deliveries.filter(id__lt=before_id)
    page = list(deliveries.order_by("-id")[:limit])
    attempts: dict[int, list[WebhookAttempt]] = {d.id: [] for d in page}
    if page:
        recent = WebhookAttempt.objects.raw(
            "SELECT * FROM (SELECT a.*, row_number() OVER (PARTITION BY delivery_id ORDER BY at DESC, id DESC) AS n"
            " FROM webhooks_attempt a WHERE delivery_id = ANY(%s)) r WHERE n <= %s ORDER BY at, id",
            [list(attempts), RECENT_ATTEMPTS],
        )
        for found in recent:
            attempts[found.delivery_id].append(found)
    for delivery in page:
        delivery.recent_attempts = attempts[delivery.id]  # type: ignore[attr-defined]
    return page


def parse_endpoint_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None
