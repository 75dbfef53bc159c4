"""POST /v1/holds, GET /v1/holds/{id}, POST /v1/holds/{id}/capture and /void."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import cast

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.views import APIView

from apps.common.api import idempotency_key, parse_aware_datetime, stored_answer, waits_out_moves
from apps.common.errors import IdempotencyKeyReused
from apps.common.openapi import (
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_KEY_INVALID,
    IDEMPOTENCY_KEY_MISSING,
    INVALID_AMOUNT,
    JSON_BODY_ERRORS,
    NOT_FOUND,
    PARAMETER_MISSING,
    UNSUPPORTED_CURRENCY,
    ErrorCode,
    error_responses,
    id_parameter,
    link,
    replayed_header,
    response_links,
)
from apps.holds.api.serializers import HoldCaptureIn, HoldCreateIn, HoldOut, HoldVoidIn
from apps.holds.errors import CaptureExceedsHold, HoldExpired, HoldNotFound, HoldNotHeld
from apps.holds.models import Hold
from apps.holds.rendering import render_hold
from apps.holds.services import HoldRequest, default_expiry, hold_capture, hold_create, hold_void, latest_expiry
from apps.ledger.errors import WalletFrozen
from apps.sharding.fence import read_by_id
from apps.sharding.routing import routable_id
from apps.transfers.api.schema import NOT_A_WALLET_ID, PAYER_CURRENCY_MISMATCH, PAYER_NOT_FOUND, SAME_WALLET
from apps.transfers.validation import Invalid, InvalidTransfer, parse_amount, parse_transfer_body

HOLD_ID = id_parameter("hold_id", "One of your holds.")
HOLD_NOT_FOUND = ErrorCode.of(HoldNotFound, "no such hold, or another client's")
HOLD_NOT_HELD = ErrorCode.of(
    HoldNotHeld, "the hold was already captured, voided or expired: the first resolution won (the message says which)"
)
HOLD_EXPIRED = ErrorCode.of(HoldExpired, "the hold's `expires_at` has passed: it is released, not capturable")
PAYER_FROZEN = ErrorCode.of(WalletFrozen, "the paying wallet is frozen: the hold stays held")
CAPTURE_EXCEEDS = ErrorCode.of(CaptureExceedsHold, "`amount_minor` is more than the amount held")
EXPIRES_UNREADABLE = ErrorCode(
    400,
    "parameter_invalid",
    "a field is malformed, or `expires_at` is a date-time this API cannot read (a leap second)",
)
EXPIRES_OUT_OF_RANGE = ErrorCode(
    422, "expires_at_out_of_range", "`expires_at` is past, or further away than the longest hold (30 days by default)"
)
HOLD_LINKS = {
    "GetHold": link("holds_retrieve", "The hold.", hold_id="$response.body#/id"),
    "CaptureHold": link("holds_capture", "Capture it.", hold_id="$response.body#/id"),
    "VoidHold": link("holds_void", "Release it.", hold_id="$response.body#/id"),
}
HOLD_KEY_REUSED = ErrorCode.of(IdempotencyKeyReused, "this key was used with another hold from this wallet")


def _expires_at(raw: dict, now: datetime) -> datetime:
    if "expires_at" not in raw:
        return default_expiry(now)
    parsed = parse_aware_datetime(raw["expires_at"])
    if parsed is None:
        raise InvalidTransfer(Invalid("parameter_invalid", "An ISO 8601 date-time with its offset.", "expires_at"))
    if not now < parsed <= latest_expiry(now):
        message = f"Must be in the future and at most {int((latest_expiry(now) - now).total_seconds())} s away."
        raise InvalidTransfer(Invalid("expires_at_out_of_range", message, "expires_at", status=422))
    return parsed


def parse_hold_id(raw: str) -> uuid.UUID:
    hold_id = routable_id(raw)
    if hold_id is None:
        raise HoldNotFound(param="hold_id")
    return hold_id


def _amount(raw: object) -> int | None:
    if not isinstance(raw, dict) or "amount_minor" not in raw:
        return None
    amount = parse_amount(raw["amount_minor"])
    if isinstance(amount, Invalid):
        raise InvalidTransfer(amount)
    return amount


class HoldCollectionView(APIView):
    @extend_schema(
        operation_id="holds_create",
        summary="Reserve money on a wallet, to capture or release later",
        description="201 with the hold `held`, or `failed` with the reason (insufficient funds, frozen): nothing"
        " is reserved then. The answer is stored with the key: a repeat replays it byte for byte.",
        request=HoldCreateIn,
        parameters=[IDEMPOTENCY_KEY_HEADER, replayed_header(201)],
        responses={
            201: HoldOut,
            **error_responses(
                IDEMPOTENCY_KEY_MISSING,
                IDEMPOTENCY_KEY_INVALID,
                NOT_A_WALLET_ID,
                PARAMETER_MISSING,
                INVALID_AMOUNT,
                UNSUPPORTED_CURRENCY,
                SAME_WALLET,
                EXPIRES_UNREADABLE,
                *JSON_BODY_ERRORS,
                PAYER_NOT_FOUND,
                HOLD_KEY_REUSED,
                PAYER_CURRENCY_MISMATCH,
                EXPIRES_OUT_OF_RANGE,
            ),
        },
        extensions=response_links(HOLD_LINKS, 201),
    )
    @waits_out_moves
    def post(self, request: Request) -> HttpResponse:
        key = idempotency_key(request)
        raw = request.data
        parsed = parse_transfer_body(cast(int, request.user.id), raw, key)
        if isinstance(parsed, Invalid):
            raise InvalidTransfer(parsed)
        expires_at = _expires_at(cast(dict, raw), timezone.now())
        created = hold_create(
            HoldRequest(parsed.client_id, parsed.payer_id, parsed.payee_id, parsed.amount_minor, parsed.currency,
                        expires_at, key, expiry_given="expires_at" in cast(dict, raw))
        )  # fmt: skip
        return stored_answer(created.status, created.body, replayed=created.replayed)


def _own_hold(request: Request, hold_id: str) -> Hold:
    parsed = parse_hold_id(hold_id)
    hold = read_by_id(
        parsed, lambda alias: Hold.objects.using(alias).filter(id=parsed).extra(where=["sharding_serves(id)"]).first()
    )
    if hold is None or hold.client_id != request.user.id:
        raise HoldNotFound(param="hold_id")
    return hold


class HoldDetailView(APIView):
    @extend_schema(
        operation_id="holds_retrieve",
        summary="Get a hold",
        parameters=[HOLD_ID],
        responses={200: HoldOut, **error_responses(HOLD_NOT_FOUND, NOT_FOUND)},
    )
    @waits_out_moves
    def get(self, request: Request, hold_id: str) -> HttpResponse:
        return stored_answer(*render_hold(_own_hold(request, hold_id)))


class HoldCaptureView(APIView):
    @extend_schema(
        operation_id="holds_capture",
        summary="Capture a hold, whole or in part: a transfer to the payee, the rest released",
        description="200 with the hold `captured` and its `transfer_id`; the transfer runs like any other"
        " (cross-shard through the saga). A second capture, a void or an expiry that came first: 409.",
        request=HoldCaptureIn,
        parameters=[HOLD_ID],
        responses={
            200: HoldOut,
            **error_responses(
                INVALID_AMOUNT, *JSON_BODY_ERRORS, HOLD_NOT_FOUND, NOT_FOUND, HOLD_NOT_HELD, HOLD_EXPIRED,
                PAYER_FROZEN, CAPTURE_EXCEEDS,
            ),
        },
    )  # fmt: skip
    @waits_out_moves
    def post(self, request: Request, hold_id: str) -> HttpResponse:
        amount = _amount(request.data)
        parsed = parse_hold_id(hold_id)
        hold = hold_capture(parsed, client_id=cast(int, request.user.id), amount_minor=amount)
        return stored_answer(*render_hold(hold))


class HoldVoidView(APIView):
    @extend_schema(
        operation_id="holds_void",
        summary="Release a hold: its amount is available again",
        request=HoldVoidIn,
        parameters=[HOLD_ID],
        responses={200: HoldOut, **error_responses(*JSON_BODY_ERRORS, HOLD_NOT_FOUND, NOT_FOUND, HOLD_NOT_HELD)},
    )
    @waits_out_moves
    def post(self, request: Request, hold_id: str) -> HttpResponse:
        raw = request.data
        note = raw.get("reason", "") if isinstance(raw, dict) else ""
        if not isinstance(note, str) or len(note) > 500:
            raise InvalidTransfer(Invalid("parameter_invalid", "A text of at most 500 characters.", "reason"))
        hold = hold_void(parse_hold_id(hold_id), client_id=cast(int, request.user.id), note=note)
        return stored_answer(*render_hold(hold))
