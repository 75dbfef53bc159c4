"""Thin views: validate input, call one service or selector, render the result."""

from __future__ import annotations

import uuid
from typing import cast

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common.api import (
    decode_cursor,
    decode_uuid_cursor,
    idempotency_key,
    page,
    page_limit,
    stored_answer,
    waits_out_moves,
)
from apps.common.errors import InvalidRequest
from apps.common.openapi import (
    IDEMPOTENCY_KEY_HEADER,
    INVALID_PAGE,
    JSON_BODY_ERRORS,
    NOT_FOUND,
    PAGE_PARAMETERS,
    PARAMETER_MISSING,
    UNSUPPORTED_CURRENCY,
    error_responses,
    replayed_header,
    response_links,
)
from apps.ledger import selectors, services
from apps.ledger.api.schema import (
    ENTRY_LINKS,
    ENTRY_PAGE_LINKS,
    MOVEMENT_BALANCE_LIMIT_EXCEEDED,
    MOVEMENT_DESCRIPTION,
    MOVEMENT_ERRORS,
    MOVEMENT_INSUFFICIENT_FUNDS,
    WALLET_ID,
    WALLET_LINKS,
    WALLET_NOT_FOUND,
    WALLET_PAGE_LINKS,
    EntryPage,
    WalletPage,
)
from apps.ledger.api.serializers import EntryOut, MovementIn, WalletCreateIn, WalletOut, WalletUpdateIn, entry_out
from apps.ledger.errors import WalletNotFound
from apps.ledger.models import EntryKind, Wallet
from apps.ledger.services import AppliedEntry
from apps.sharding.routing import routable_id


def parse_wallet_id(raw: str) -> uuid.UUID:
    """A wallet id from the URL; anything we could not have issued is simply not found."""
    wallet_id = routable_id(raw)
    if wallet_id is None:
        raise WalletNotFound(param="wallet_id")
    return wallet_id


def owned_wallet(request: Request, raw_id: str) -> Wallet:
    return selectors.wallet_get(wallet_id=parse_wallet_id(raw_id), owner_id=request.user.id)


class WalletCollectionView(APIView):
    @extend_schema(
        operation_id="wallets_create",
        summary="Create a wallet",
        request=WalletCreateIn,
        responses={201: WalletOut, **error_responses(PARAMETER_MISSING, UNSUPPORTED_CURRENCY, *JSON_BODY_ERRORS)},
        extensions=response_links(WALLET_LINKS, 201),
    )
    @waits_out_moves
    def post(self, request: Request) -> Response:
        data = WalletCreateIn(data=request.data)
        data.is_valid(raise_exception=True)
        wallet = services.wallet_create(
            owner_id=cast(int, request.user.id),
            currency=data.validated_data["currency"],
            payer_may_refund=data.validated_data["payer_may_refund"],
            accepts_from=data.validated_data["accepts_from"],
            description=data.validated_data.get("description"),
            metadata=data.validated_data.get("metadata"),
        )
        return Response(WalletOut(wallet).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="wallets_list",
        summary="List your wallets",
        parameters=PAGE_PARAMETERS,
        responses={200: WalletPage, **error_responses(INVALID_PAGE)},
        extensions=response_links(WALLET_PAGE_LINKS, 200),
    )
    def get(self, request: Request) -> Response:
        limit = page_limit(request)
        before_id = decode_uuid_cursor(request)
        wallets = selectors.wallet_list(owner_id=cast(int, request.user.id), before_id=before_id, limit=limit + 1)
        return Response(page(wallets, limit, lambda w: str(w.id), lambda w: WalletOut(w).data))


class WalletDetailView(APIView):
    @extend_schema(
        operation_id="wallets_retrieve",
        summary="Get a wallet",
        parameters=[WALLET_ID],
        responses={200: WalletOut, **error_responses(WALLET_NOT_FOUND, NOT_FOUND)},
    )
    @waits_out_moves  # a read of a range being switched waits for its new owner
    def get(self, request: Request, wallet_id: str) -> Response:
        return Response(WalletOut(owned_wallet(request, wallet_id)).data)

    @extend_schema(
        operation_id="wallets_partial_update",
        summary="Change a wallet's settings: refunds by payers, whose transfers it takes, description, metadata",
        request=WalletUpdateIn,
        parameters=[WALLET_ID],
        responses={
            200: WalletOut,
            **error_responses(*JSON_BODY_ERRORS, WALLET_NOT_FOUND, NOT_FOUND),
        },
    )
    @waits_out_moves
    def patch(self, request: Request, wallet_id: str) -> Response:
        parsed = parse_wallet_id(wallet_id)
        data = WalletUpdateIn(data=request.data)
        data.is_valid(raise_exception=True)
        given = data.validated_data
        if not given:  # nothing to change: the wallet as it is
            return Response(WalletOut(owned_wallet(request, wallet_id)).data)
        changes = services.WalletChanges(
            payer_may_refund=given.get("payer_may_refund"),
            accepts_from=given.get("accepts_from"),
            description=given.get("description"),
            set_description="description" in given,
            metadata=given.get("metadata"),
        )
        wallet = services.wallet_update(wallet_id=parsed, owner_id=cast(int, request.user.id), changes=changes)
        return Response(WalletOut(wallet).data)


def _render_entry(entry: AppliedEntry) -> str:
    return JSONRenderer().render(entry_out(entry)).decode()


class _MovementView(APIView):
    kind: EntryKind

    @waits_out_moves
    def post(self, request: Request, wallet_id: str) -> HttpResponse:
        wallet = owned_wallet(request, wallet_id)
        key = idempotency_key(request)
        data = MovementIn(data=request.data)
        data.is_valid(raise_exception=True)
        answer = services.wallet_movement(
            wallet_id=wallet.id, kind=self.kind, amount_minor=data.validated_data["amount_minor"], key=key,
            render=_render_entry,
        )  # fmt: skip
        return stored_answer(answer.status, answer.body, replayed=answer.replayed)


class DepositView(_MovementView):
    kind = EntryKind.DEPOSIT

    @extend_schema(
        operation_id="wallets_deposits_create",
        summary="Fund a wallet",
        description=MOVEMENT_DESCRIPTION,
        request=MovementIn,
        parameters=[WALLET_ID, IDEMPOTENCY_KEY_HEADER, replayed_header(201, 409, 422)],
        responses={201: EntryOut, **error_responses(*MOVEMENT_ERRORS, MOVEMENT_BALANCE_LIMIT_EXCEEDED)},
        extensions=response_links(ENTRY_LINKS, 201),
    )
    def post(self, request: Request, wallet_id: str) -> HttpResponse:
        return super().post(request, wallet_id)


class WithdrawalView(_MovementView):
    kind = EntryKind.WITHDRAWAL

    @extend_schema(
        operation_id="wallets_withdrawals_create",
        summary="Withdraw from a wallet (never below zero)",
        description=MOVEMENT_DESCRIPTION,
        request=MovementIn,
        parameters=[WALLET_ID, IDEMPOTENCY_KEY_HEADER, replayed_header(201, 409, 422)],
        responses={201: EntryOut, **error_responses(*MOVEMENT_ERRORS, MOVEMENT_INSUFFICIENT_FUNDS)},
        extensions=response_links(ENTRY_LINKS, 201),
    )
    def post(self, request: Request, wallet_id: str) -> HttpResponse:
        return super().post(request, wallet_id)


class EntryListView(APIView):
    @extend_schema(
        operation_id="wallets_entries_list",
        summary="Ledger history, newest first",
        parameters=[WALLET_ID, *PAGE_PARAMETERS],
        responses={200: EntryPage, **error_responses(INVALID_PAGE, WALLET_NOT_FOUND, NOT_FOUND)},
        extensions=response_links(ENTRY_PAGE_LINKS, 200),
    )
    @waits_out_moves  # a read of a range being switched waits for its new owner
    def get(self, request: Request, wallet_id: str) -> Response:
        wallet = owned_wallet(request, wallet_id)
        limit = page_limit(request)
        cursor = decode_cursor(request)
        if cursor is not None and (isinstance(cursor, bool) or not isinstance(cursor, int)):
            raise InvalidRequest("cursor is not one this API returned.", param="cursor")
        entries = selectors.entry_list(wallet_id=wallet.id, before_seq=cursor, limit=limit + 1)
        return Response(page(entries, limit, lambda e: e.seq, entry_out))
