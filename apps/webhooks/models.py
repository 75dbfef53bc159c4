"""Webhook endpoints, deliveries and attempts, in the control database beside the API clients.

They live where a client's endpoints live rather than on the shards: an endpoint's state
(failing since when, disabled or not) and the cap on its backlog are one row and one index
range, wherever the events came from, and nothing here is on the money path. A delivery is
one event for one endpoint (unique: a re-dispatched event, after a crash or a bucket move,
adds nothing); it carries the exact body that is signed and sent.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import models
from django.db.models import Q

from apps.accounts.models import ApiClient


class EndpointStatus(models.TextChoices):
    ENABLED = "enabled"
    DISABLED = "disabled"


class WebhookEndpoint(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.CharField(max_length=2048, help_text="Checked by apps.webhooks.outbound (http(s), a public host).")
    event_types = models.JSONField(help_text='The event types sent, or ["*"] for all.')
    description = models.CharField(max_length=500, blank=True, default="")
    secret = models.CharField(max_length=80, help_text="The signing secret (HMAC-SHA256), shown once at creation.")
    status = models.CharField(max_length=8, choices=EndpointStatus.choices, default=EndpointStatus.ENABLED)
    disabled_reason = models.CharField(max_length=200, blank=True, default="")
    failing_since = models.DateTimeField(null=True, blank=True, help_text="First failure of the current run.")
    consecutive_failures = models.IntegerField(default=0)
    events_dropped = models.BigIntegerField(default=0, help_text="Events not queued: the backlog was at its cap.")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "webhooks_endpoint"
        indexes = [models.Index(fields=["client", "status"], name="endpoint_per_client")]

    def __str__(self) -> str:
        return f"{self.url} ({self.status})"

    def wants(self, event_type: str) -> bool:
        return "*" in self.event_types or event_type in self.event_types


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"  # to send, or to send again at next_attempt_at
    SUCCEEDED = "succeeded"  # the endpoint answered 2xx
    FAILED = "failed"  # retried for the whole retry window, or its endpoint was disabled


class WebhookDelivery(models.Model):
    id = models.BigAutoField(primary_key=True)
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=40)
    object_id = models.UUIDField()
    body = models.TextField(help_text="The JSON sent (the event as GET /v1/events/{id} shows it).")
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField(help_text="Also the lease of a sender that claimed it.")
    last_status_code = models.IntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "webhooks_delivery"
        constraints = [models.UniqueConstraint(fields=["endpoint", "event_id"], name="delivery_once_per_endpoint")]
        indexes = [
            # The sender's scan: pending deliveries by due time.
            models.Index(fields=["next_attempt_at"], name="delivery_due", condition=Q(status="pending")),
            models.Index(fields=["endpoint", "-id"], name="delivery_per_endpoint"),
            models.Index(fields=["created_at"], name="delivery_by_age"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} -> {self.endpoint_id} ({self.status})"

    @property
    def next_attempt_if_pending(self) -> datetime | None:
        return self.next_attempt_at if self.status == DeliveryStatus.PENDING else None


class WebhookAttempt(models.Model):
    id = models.BigAutoField(primary_key=True)
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    at = models.DateTimeField()
    status_code = models.IntegerField(null=True, blank=True, help_text="None: no HTTP answer (see error).")
    duration_ms = models.IntegerField()
    error = models.CharField(max_length=500, blank=True, default="")
    response_excerpt = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        db_table = "webhooks_attempt"
        indexes = [models.Index(fields=["delivery", "at"], name="attempt_per_delivery")]

    def __str__(self) -> str:
        return f"{self.delivery_id} at {self.at}: {self.status_code or self.error}"
