from __future__ import annotations

from typing import Any

from rest_framework import serializers

from apps.common.api import StrictTextField
from apps.events.models import EVENT_TYPES
from apps.webhooks.models import DeliveryStatus, EndpointStatus, WebhookDelivery, WebhookEndpoint

EVENT_TYPE_CHOICES = ["*", *EVENT_TYPES]


class EndpointCreateIn(serializers.Serializer):
    url = StrictTextField(
        min_length=1, max_length=2048, help_text="Where events are POSTed: an http(s) URL (https in production)."
    )
    event_types = serializers.ListField(
        child=serializers.ChoiceField(EVENT_TYPE_CHOICES),
        min_length=1,
        max_length=len(EVENT_TYPE_CHOICES),
        help_text='The event types to send, or `["*"]` for every type (see GET /v1/events).',
    )
    description = StrictTextField(max_length=500, required=False, default="", allow_blank=True)


class EndpointUpdateIn(serializers.Serializer):
    url = StrictTextField(min_length=1, max_length=2048, required=False)
    event_types = serializers.ListField(
        child=serializers.ChoiceField(EVENT_TYPE_CHOICES), min_length=1, max_length=len(EVENT_TYPE_CHOICES),
        required=False,
    )  # fmt: skip
    description = StrictTextField(max_length=500, required=False, allow_blank=True)
    status = serializers.ChoiceField(
        EndpointStatus.choices,
        required=False,
        help_text="`enabled` again after a disablement: its failure run is cleared and pending deliveries resume.",
    )


class EndpointOut(serializers.Serializer):
    id = serializers.UUIDField()
    url = serializers.CharField()
    event_types = serializers.ListField(child=serializers.CharField())
    description = serializers.CharField()
    status = serializers.ChoiceField(
        EndpointStatus.choices, help_text="`disabled`: by its client, or after a long run of failed deliveries."
    )
    disabled_reason = serializers.CharField(help_text="Why it is disabled (empty when enabled).")
    failing_since = serializers.DateTimeField(
        allow_null=True, help_text="First failure of the current run of failed deliveries."
    )
    consecutive_failures = serializers.IntegerField(min_value=0)
    events_dropped = serializers.IntegerField(
        min_value=0, help_text="Events not queued because its backlog was at the cap: catch up from GET /v1/events."
    )
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class EndpointCreatedOut(EndpointOut):
    secret = serializers.CharField(
        help_text="The signing secret: shown only in this answer. Verify `Shardwallet-Signature` with it."
    )


class AttemptOut(serializers.Serializer):
    at = serializers.DateTimeField()
    status_code = serializers.IntegerField(allow_null=True, help_text="Null: no HTTP answer (see `error`).")
    duration_ms = serializers.IntegerField(min_value=0)
    error = serializers.CharField()


class DeliveryOut(serializers.Serializer):
    id = serializers.IntegerField()
    event_id = serializers.UUIDField()
    event_type = serializers.CharField()
    object_id = serializers.UUIDField()
    status = serializers.ChoiceField(DeliveryStatus.choices)
    attempts = serializers.IntegerField(min_value=0)
    next_attempt_at = serializers.DateTimeField(
        source="next_attempt_if_pending", allow_null=True, help_text="Null unless pending."
    )
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)
    attempt_log = AttemptOut(many=True, source="recent_attempts", help_text="Its attempts, oldest first (the last 20).")


def endpoint_out(endpoint: WebhookEndpoint, *, with_secret: bool = False) -> dict[str, Any]:
    body = dict(EndpointOut(endpoint).data)
    if with_secret:
        body["secret"] = endpoint.secret
    return body


def delivery_out(delivery: WebhookDelivery) -> dict[str, Any]:
    """Needs `delivery.recent_attempts` (its attempts, oldest first), set by the selector."""
    return dict(DeliveryOut(delivery).data)
