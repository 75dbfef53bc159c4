"""/v1/webhook_endpoints: register, list, change and delete endpoints; see their deliveries."""

from __future__ import annotations

from typing import cast

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common.api import decode_cursor, page, page_limit
from apps.common.errors import InvalidRequest
from apps.common.openapi import (
    INVALID_PAGE,
    JSON_BODY_ERRORS,
    NOT_FOUND,
    PAGE_PARAMETERS,
    PARAMETER_MISSING,
    ErrorCode,
    error_responses,
    next_page_link,
    page_of,
    response_links,
)
from apps.webhooks import selectors, services
from apps.webhooks.api.serializers import (
    DeliveryOut,
    EndpointCreatedOut,
    EndpointCreateIn,
    EndpointOut,
    EndpointUpdateIn,
    delivery_out,
    endpoint_out,
)
from apps.webhooks.errors import EndpointLimitReached, EndpointNotFound, UrlNotAllowed
from apps.webhooks.models import WebhookEndpoint

ENDPOINT_ID = OpenApiParameter(
    "endpoint_id", {"type": "string", "format": "uuid"}, OpenApiParameter.PATH, description="One of your endpoints."
)
ENDPOINT_NOT_FOUND = ErrorCode.of(EndpointNotFound, "no such endpoint, or another client's")
URL_NOT_ALLOWED = ErrorCode.of(
    UrlNotAllowed,
    "the URL is not http(s) (https only in production), carries credentials, or names a non-public address",
)
ENDPOINT_LIMIT = ErrorCode.of(EndpointLimitReached, "the client has its maximum of endpoints (16 by default)")
DeliveryPage = page_of(DeliveryOut, "WebhookDeliveryPage", "Deliveries")
EndpointPage = page_of(EndpointOut, "WebhookEndpointPage", "Webhook endpoints")
WEBHOOKS_DESCRIPTION = (
    "Each event of the endpoint's types is POSTed as JSON (the event as GET /v1/events/{id} shows it) with "
    '`Shardwallet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>`. '
    "Receivers: verify it over the raw body in constant time and refuse a `t` more than 5 minutes from your "
    "clock. Delivery is at least once: deduplicate by the event's `id`. A 2xx answer is success; anything "
    "else, a timeout (5 s) or a refused connection is retried with exponential backoff and jitter for 3 days. "
    "Retries can reorder events: order one object's events by `seq`. An endpoint failing for 3 days is disabled."
)


def _validated(serializer: serializers.Serializer) -> dict:
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _endpoint(request: Request, endpoint_id: str) -> WebhookEndpoint:
    parsed = selectors.parse_endpoint_id(endpoint_id)
    if parsed is None:
        raise EndpointNotFound(param="endpoint_id")
    return services.endpoint_get(client_id=cast(int, request.user.id), endpoint_id=parsed)


class EndpointCollectionView(APIView):
    @extend_schema(
        operation_id="webhook_endpoints_create",
        summary="Register a webhook endpoint",
        description=WEBHOOKS_DESCRIPTION,
        request=EndpointCreateIn,
        responses={
            201: EndpointCreatedOut,
            **error_responses(PARAMETER_MISSING, *JSON_BODY_ERRORS, URL_NOT_ALLOWED, ENDPOINT_LIMIT),
        },
    )
    def post(self, request: Request) -> Response:
        data = _validated(EndpointCreateIn(data=request.data))
        endpoint = services.endpoint_create(client_id=cast(int, request.user.id), **data)
        return Response(endpoint_out(endpoint, with_secret=True), status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="webhook_endpoints_list",
        summary="List your webhook endpoints",
        description="All of them in one page (a client has at most 16).",
        responses={200: EndpointPage, **error_responses()},
    )
    def get(self, request: Request) -> Response:
        endpoints = selectors.endpoint_list(client_id=cast(int, request.user.id))
        return Response({"data": [endpoint_out(e) for e in endpoints], "has_more": False, "next_cursor": None})


class EndpointDetailView(APIView):
    @extend_schema(
        operation_id="webhook_endpoints_retrieve",
        summary="Get a webhook endpoint",
        parameters=[ENDPOINT_ID],
        responses={200: EndpointOut, **error_responses(ENDPOINT_NOT_FOUND, NOT_FOUND)},
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        return Response(endpoint_out(_endpoint(request, endpoint_id)))

    @extend_schema(
        operation_id="webhook_endpoints_update",
        summary="Change a webhook endpoint, or enable it again",
        parameters=[ENDPOINT_ID],
        request=EndpointUpdateIn,
        responses={
            200: EndpointOut,
            **error_responses(*JSON_BODY_ERRORS, URL_NOT_ALLOWED, ENDPOINT_NOT_FOUND, NOT_FOUND),
        },
    )
    def patch(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        changes = _validated(EndpointUpdateIn(data=request.data))
        updated = services.endpoint_update(client_id=endpoint.client_id, endpoint_id=endpoint.id, changes=changes)
        return Response(endpoint_out(updated))

    @extend_schema(
        operation_id="webhook_endpoints_destroy",
        summary="Delete a webhook endpoint (its deliveries with it)",
        parameters=[ENDPOINT_ID],
        responses={204: None, **error_responses(ENDPOINT_NOT_FOUND, NOT_FOUND)},
    )
    def delete(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        services.endpoint_delete(client_id=endpoint.client_id, endpoint_id=endpoint.id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeliveryListView(APIView):
    @extend_schema(
        operation_id="webhook_endpoints_deliveries_list",
        summary="An endpoint's deliveries and their attempts, newest first",
        parameters=[ENDPOINT_ID, *PAGE_PARAMETERS],
        responses={200: DeliveryPage, **error_responses(INVALID_PAGE, ENDPOINT_NOT_FOUND, NOT_FOUND)},
        extensions=response_links(
            next_page_link("webhook_endpoints_deliveries_list", endpoint_id="$request.path.endpoint_id"), 200
        ),
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        limit = page_limit(request)
        cursor = decode_cursor(request)
        if cursor is not None and (isinstance(cursor, bool) or not isinstance(cursor, int)):
            raise InvalidRequest("cursor is not one this API returned.", param="cursor")
        deliveries = selectors.delivery_list(endpoint=endpoint, before_id=cursor, limit=limit + 1)
        return Response(page(deliveries, limit, lambda d: d.id, delivery_out))
