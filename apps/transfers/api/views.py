from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common.api import (
    decode_uuid_cursor,
    idempotency_key,
    page,
    page_limit,
    parse_aware_datetime,
    stored_answer,
    waits_out_moves,
)
from apps.common.errors import InvalidRequest
from apps.common.openapi import (
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_KEY_INVALID,
    IDEMPOTENCY_KEY_MISSING,
    INVALID_AMOUNT,
    INVALID_JSON,
    INVALID_PAGE,
    JSON_BODY_ERRORS,
    NOT_FOUND,
    PAGE_PARAMETERS,
    PARAMETER_MISSING,
    UNSUPPORTED_CURRENCY,
    UNSUPPORTED_MEDIA_TYPE,
    ErrorCode,
    error_responses,
    replayed_header,
    response_links,
)
from apps.holds.selectors import held_minor
from apps.ledger.api.schema import WALLET_ID, WALLET_NOT_FOUND
from apps.ledger.api.views import owned_wallet
from apps.ledger.selectors import entry_at
from apps.refunds.rendering import refund_out
from apps.refunds.selectors import refund_list
from apps.sharding.fence import is_fence_refusal, retry_while_fenced
from apps.sharding.ids import InvalidId, parse_id
from apps.sharding.routing import alias_for_id, refresh_shard_map
from apps.transfers import selectors
from apps.transfers.api.schema import (
    BATCH_INVALID,
    BATCH_LINKS,
    BATCH_URL,
    DIRECTION,
    DIRECTION_INVALID,
    IN_PROGRESS,
    NOT_A_WALLET_ID,
    PAYER_CURRENCY_MISMATCH,
    PAYER_NOT_FOUND,
    SAME_WALLET,
    TRANSFER_ID,
    TRANSFER_KEY_REUSED,
    TRANSFER_LINKS,
    TRANSFER_NOT_FOUND,
    TRANSFER_PAGE_LINKS,
    WAIT,
    WAIT_INVALID,
    TransferPage,
)
from apps.transfers.api.serializers import (
    BalanceAtOut,
    BalanceOut,
    TransferBatchIn,
    TransferBatchOut,
    TransferCreateIn,
    TransferOut,
    received_out,
    transfer_out,
)
from apps.transfers.batch import MAX_BATCH, transfer_create_batch
from apps.transfers.creation import advance_inline, transfer_create, transfer_store_response
from apps.transfers.errors import TransferNotFound
from apps.transfers.idempotency import refusal_of
from apps.transfers.models import Transfer, TransferStatus
from apps.transfers.saga import Event
from apps.transfers.validation import Invalid, InvalidTransfer, parse_transfer_body


def render_transfer(transfer: Transfer, history: list[Event] | None = None) -> tuple[int, str]:
    """201 once terminal (completed or failed), 202 while still in flight; the JSON as sent."""
    if history is None:
        history = selectors.transfer_history(transfer_id=transfer.id)
    body = transfer_out(transfer, history)
    code = status.HTTP_201_CREATED if transfer.is_terminal else status.HTTP_202_ACCEPTED
    return code, json.dumps(body, separators=(",", ":"), ensure_ascii=False)


_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")  # a JSON number, in ASCII


def wait_seconds(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    # A number as JSON writes it: float() would also take " 5 ", "1_0", "nan" or other scripts' digits.
    seconds = float(raw) if _DECIMAL.fullmatch(raw) else -1.0
    if not 0 <= seconds <= settings.TRANSFER_MAX_WAIT_SECONDS:
        raise InvalidRequest("wait must be a number of seconds from 0 to 30.", param="wait")
    return seconds


def wait_until_terminal(transfer: Transfer, seconds: float) -> Transfer:
    """The transfer once terminal, or as last read when the wait is over.

    A switch of its bucket during the wait is only a pause: a read refused for it keeps the
    last state read and tries again on the new owner.
    """
    deadline = time.monotonic() + seconds
    pause = 0.005
    while not transfer.is_terminal and time.monotonic() < deadline:
        time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        pause = min(pause * 1.5, 0.1)
        try:
            transfer = selectors.transfer_get(transfer_id=transfer.id)
        except Exception as exc:
            if not is_fence_refusal(exc):
                raise
            refresh_shard_map()
    return transfer


def _store_waited_response(transfer: Transfer, record_id: int) -> tuple[int, str]:
    """The waiting request's answer, stored on the record wherever its bucket now lives."""

    def store() -> tuple[int, str]:
        return transfer_store_response(alias_for_id(transfer.id), record_id, *render_transfer(transfer))

    return retry_while_fenced(store, wait_seconds=settings.SHARD_MOVE_WAIT_SECONDS)


class TransferCollectionView(APIView):
    @extend_schema(
        operation_id="transfers_create",
        summary="Create a transfer",
        description="201 once terminal (`completed` or `failed`, e.g. for insufficient funds), 202 while in flight.",
        request=TransferCreateIn,
        parameters=[IDEMPOTENCY_KEY_HEADER, WAIT, replayed_header(201, 202)],
        responses={
            201: TransferOut,
            202: TransferOut,
            **error_responses(
                IDEMPOTENCY_KEY_MISSING,
                IDEMPOTENCY_KEY_INVALID,
                WAIT_INVALID,
                NOT_A_WALLET_ID,
                PARAMETER_MISSING,
                INVALID_AMOUNT,
                UNSUPPORTED_CURRENCY,
                SAME_WALLET,
                *JSON_BODY_ERRORS,
                PAYER_NOT_FOUND,
                IN_PROGRESS,
                TRANSFER_KEY_REUSED,
                PAYER_CURRENCY_MISMATCH,
            ),
        },
        extensions=response_links(TRANSFER_LINKS, 201, 202),
    )
    def post(self, request: Request) -> HttpResponse:
        key = idempotency_key(request)
        wait = wait_seconds(request)
        transfer_request = parse_transfer_body(cast(int, request.user.id), request.data, key)
        if isinstance(transfer_request, Invalid):
            raise InvalidTransfer(transfer_request)
        # Only the creation is re-run when a move refuses it: once this request's key is
        # recorded, running it again would find its own record unanswered (409 to itself).
        # Same-shard transfers end in their first step: only a cross-shard one is advanced here.
        inline = settings.TRANSFER_CREDIT_INLINE and alias_for_id(transfer_request.payer_id) != alias_for_id(
            transfer_request.payee_id
        )
        created = retry_while_fenced(
            lambda: transfer_create(
                transfer_request, render=render_transfer, defer_response=wait > 0 or inline, drain=not inline
            ),
            wait_seconds=settings.SHARD_MOVE_WAIT_SECONDS,
        )
        status_code, body = created.status, created.body
        if status_code is None:  # answered once advanced here, or terminal, or when the wait is over
            assert created.transfer is not None  # noqa: S101 - accepted
            assert created.record_id is not None  # noqa: S101
            transfer = created.transfer
            if inline and transfer.status == TransferStatus.DEBITED:
                transfer = advance_inline(transfer)
            transfer = wait_until_terminal(transfer, wait)
            status_code, body = _store_waited_response(transfer, created.record_id)
        return stored_answer(status_code, cast(str, body), replayed=created.outcome == "replayed")


class TransferBatchView(APIView):
    @extend_schema(
        operation_id="transfers_batch_create",
        summary="Create up to 1,000 transfers, each with its own idempotency key and result",
        description="One bad item never sinks the others: each gets the answer the single endpoint would give.",
        request=TransferBatchIn,
        responses={200: TransferBatchOut, **error_responses(INVALID_JSON, BATCH_INVALID, UNSUPPORTED_MEDIA_TYPE)},
        extensions=response_links(BATCH_LINKS, 200),
    )
    @waits_out_moves
    def post(self, request: Request) -> HttpResponse:
        body = request.data
        items = body.get("transfers") if isinstance(body, dict) else None
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise InvalidRequest(f"Send {{'transfers': [...]}} with 1 to {MAX_BATCH} items.", param="transfers")
        results = transfer_create_batch(client_id=cast(int, request.user.id), items=items, render=render_transfer)
        # Assembled as text: each transfer is embedded exactly as its stored (replayable) response.
        parts = []
        for r in results:
            error = refusal_of(r.error) if r.error is not None else None
            head = json.dumps(
                {"index": r.index, "outcome": r.outcome, "status": r.status, "error": error},
                separators=(",", ":"),
                ensure_ascii=False,
            )
            parts.append(f'{head[:-1]},"transfer":{r.body or "null"}}}')
        return HttpResponse('{"results":[' + ",".join(parts) + "]}", content_type="application/json")


def parse_transfer_id(raw: str) -> uuid.UUID:
    try:
        return parse_id(raw)
    except InvalidId:
        raise TransferNotFound(param="transfer_id") from None


class TransferDetailView(APIView):
    @extend_schema(
        operation_id="transfers_retrieve",
        summary="Get a transfer with its status history and refunds",
        parameters=[TRANSFER_ID],
        responses={200: TransferOut, **error_responses(TRANSFER_NOT_FOUND, NOT_FOUND, BATCH_URL)},
    )
    @waits_out_moves  # a read of a range being switched waits for its new owner
    def get(self, request: Request, transfer_id: str) -> Response:
        try:
            transfer = selectors.transfer_get(transfer_id=parse_transfer_id(transfer_id), client_id=request.user.id)
        except ValueError:  # bucket outside the shard map
            raise TransferNotFound(param="transfer_id") from None
        refunds = [refund_out(r) for r in refund_list(original=transfer)]
        return Response(transfer_out(transfer, selectors.transfer_history(transfer_id=transfer.id), refunds))


class WalletTransferListView(APIView):
    @extend_schema(
        operation_id="wallets_transfers_list",
        summary="Transfers a wallet paid or received, newest first",
        parameters=[WALLET_ID, DIRECTION, *PAGE_PARAMETERS],
        responses={
            200: TransferPage,
            **error_responses(DIRECTION_INVALID, INVALID_PAGE, WALLET_NOT_FOUND, NOT_FOUND),
        },
        extensions=response_links(TRANSFER_PAGE_LINKS, 200),
    )
    @waits_out_moves  # a read of a range being switched waits for its new owner
    def get(self, request: Request, wallet_id: str) -> Response:
        direction = request.query_params.get("direction", "out")
        if direction not in ("out", "in", "all"):
            raise InvalidRequest("direction must be out, in or all.", param="direction")
        wallet = owned_wallet(request, wallet_id)
        limit = page_limit(request)
        before_id = decode_uuid_cursor(request)
        # Both kinds are ordered by transfer id (its creation time): `all` merges the two lists,
        # and the cursor (the last transfer's id) continues both.
        rows: list[tuple[uuid.UUID, dict[str, Any]]] = []
        if direction != "in":
            paid = selectors.transfer_list(payer_id=wallet.id, before_id=before_id, limit=limit + 1)
            rows += [(t.id, {**transfer_out(t), "direction": "out"}) for t in paid]
        if direction != "out":
            received = selectors.received_list(
                wallet_id=wallet.id, currency=wallet.currency, before_id=before_id, limit=limit + 1
            )
            rows += [(r.transfer_id, received_out(r)) for r in received]
        rows.sort(key=lambda row: row[0], reverse=True)
        return Response(page(rows[: limit + 1], limit, lambda row: str(row[0]), lambda row: row[1]))


AT_PARAMETER = OpenApiParameter(
    "at",
    {"type": "string", "format": "date-time"},
    description="A point in time (ISO 8601 with its offset): the balance then, from the entries' running balance, in"
    " the `BalanceAt` shape.",
)
AT_INVALID = ErrorCode.of(InvalidRequest, "`at` is not an ISO 8601 date-time with its offset")


def _point_in_time(request: Request) -> datetime | None:
    raw = request.query_params.get("at")
    if raw is None:
        return None
    parsed = parse_aware_datetime(raw)
    try:  # PostgreSQL takes offsets up to 15:59 only: in UTC
        utc = parsed.astimezone(UTC) if parsed is not None else None
    except OverflowError:
        utc = None
    if utc is None:
        raise InvalidRequest("at must be an ISO 8601 date-time with its offset, e.g. 2026-12-06T00:00:00Z.", param="at")
    return utc


class WalletBalanceView(APIView):
    @extend_schema(
        operation_id="wallets_balance_retrieve",
        summary="Balance, read from the wallet's shard; or at a point in time",
        parameters=[WALLET_ID, AT_PARAMETER],
        responses={
            200: PolymorphicProxySerializer(
                component_name="BalanceOrBalanceAt",
                serializers=[BalanceOut, BalanceAtOut],
                resource_type_field_name=None,
            ),
            **error_responses(AT_INVALID, WALLET_NOT_FOUND, NOT_FOUND),
        },
    )
    @waits_out_moves  # a read of a range being switched waits for its new owner
    def get(self, request: Request, wallet_id: str) -> Response:
        at = _point_in_time(request)
        wallet = owned_wallet(request, wallet_id)
        if at is not None:
            entry = entry_at(wallet_id=wallet.id, last_seq=wallet.last_entry_seq, at=at)
            return Response(
                BalanceAtOut(
                    {
                        "wallet_id": wallet.id, "currency": wallet.currency, "at": at,
                        "available": entry.balance_after_minor if entry else 0, "entry_seq": entry.seq if entry else 0,
                        "entry_id": entry.id if entry else None,
                    }
                ).data
            )  # fmt: skip
        pending_out = selectors.pending_out_minor(wallet_id=wallet.id)
        held = held_minor(wallet_id=wallet.id)
        body = {
            "wallet_id": wallet.id,
            "currency": wallet.currency,
            "posted": wallet.balance_minor + pending_out + held,
            "pending_out": pending_out,
            "held": held,
            "available": wallet.balance_minor,
        }
        return Response(BalanceOut(body).data)
