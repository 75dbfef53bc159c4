"""GET /v1/events (a client's events, newest first, to catch up) and GET /v1/events/{id}."""

from __future__ import annotations

from typing import cast

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common.api import decode_uuid_cursor, page, page_limit, waits_out_moves
from apps.common.errors import InvalidRequest
from apps.common.openapi import (
    ID_PATTERN,
    NOT_FOUND,
    PAGE_PARAMETERS,
    ErrorCode,
    error_responses,
    id_parameter,
    next_page_link,
    page_of,
    response_links,
)
from apps.events import selectors
from apps.events.api.serializers import EventOut
from apps.events.errors import EventNotFound
from apps.events.models import EVENT_TYPES
from apps.events.rendering import event_out
from apps.sharding.ids import InvalidId, parse_id
from apps.sharding.routing import routable_id

EventPage = page_of(EventOut, "EventPage", "Events")
EVENT_ID = id_parameter("event_id", "One of your events.")
EVENT_NOT_FOUND = ErrorCode.of(EventNotFound, "no such event, or another client's")
INVALID_FILTER = ErrorCode.of(
    InvalidRequest, "`type` is not an event type, `object_id` is not an id, or `limit`/`cursor` is invalid"
)
FILTERS = [
    OpenApiParameter(
        "type",
        OpenApiTypes.STR,
        enum=list(EVENT_TYPES),
        description="Only events of this type; repeat the parameter for several.",
        many=True,
    ),
    OpenApiParameter(
        "object_id",
        {"type": "string", "format": "uuid", "pattern": ID_PATTERN},
        description="Only events about this object (a transfer, wallet, hold or entry).",
    ),
]


class EventListView(APIView):
    @extend_schema(
        operation_id="events_list",
        summary="List your events, newest first",
        description=(
            "Every change a client can be told about, kept 30 days (`SHARDWALLET_EVENT_RETENTION_DAYS`): "
            "what webhooks deliver, to catch up after downtime. Each event is written in the transaction "
            "of its change, so a change is never without its event."
        ),
        parameters=[*PAGE_PARAMETERS, *FILTERS],
        responses={200: EventPage, **error_responses(INVALID_FILTER)},
        extensions=response_links(next_page_link("events_list"), 200),
    )
    def get(self, request: Request) -> Response:
        limit = page_limit(request)
        before_id = decode_uuid_cursor(request)
        types = request.query_params.getlist("type")
        unknown = [t for t in types if t not in EVENT_TYPES]
        if unknown:
            raise InvalidRequest(f"{unknown[0]!r} is not an event type.", param="type")
        raw_object = request.query_params.get("object_id")
        try:
            object_id = parse_id(raw_object) if raw_object is not None else None
        except InvalidId:
            raise InvalidRequest("object_id is not an id this API issued.", param="object_id") from None
        events = selectors.event_list(
            client_id=cast(int, request.user.id), before_id=before_id, limit=limit + 1, types=types,
            object_id=object_id,
        )  # fmt: skip
        return Response(page(events, limit, lambda e: str(e.id), event_out))


class EventDetailView(APIView):
    @extend_schema(
        operation_id="events_retrieve",
        summary="Get an event",
        parameters=[EVENT_ID],
        responses={200: EventOut, **error_responses(EVENT_NOT_FOUND, NOT_FOUND)},
    )
    @waits_out_moves
    def get(self, request: Request, event_id: str) -> Response:
        parsed = routable_id(event_id)
        if parsed is None:
            raise EventNotFound(param="event_id")
        return Response(event_out(selectors.event_get(client_id=cast(int, request.user.id), event_id=parsed)))
