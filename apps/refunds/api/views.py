"""POST /v1/transfers/{id}/refunds."""

from __future__ import annotations

from typing import cast

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.views import APIView

from apps.common.api import AmountField, idempotency_key, stored_answer, waits_out_moves
from apps.common.errors import IdempotencyKeyReused
from apps.common.openapi import (
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_KEY_INVALID,
    IDEMPOTENCY_KEY_MISSING,
    INVALID_AMOUNT,
    JSON_BODY_ERRORS,
    NOT_FOUND,
    ErrorCode,
    error_responses,
    id_parameter,
    replayed_header,
    response_links,
)
from apps.refunds.errors import RefundExceedsRemaining, RefundNotAllowed, TransferFullyRefunded, TransferNotRefundable
from apps.refunds.services import RefundRequest, refund_create
from apps.sharding.routing import routable_id
from apps.transfers.api.schema import TRANSFER_LINKS
from apps.transfers.api.serializers import TransferOut
from apps.transfers.api.views import render_transfer
from apps.transfers.errors import TransferNotFound
from apps.transfers.validation import Invalid, InvalidTransfer, parse_amount

ORIGINAL_ID = id_parameter("transfer_id", "The completed transfer to refund (one you made or one paid to your wallet).")
ORIGINAL_NOT_FOUND = ErrorCode.of(TransferNotFound, "no such transfer, or one neither made by you nor paid to you")
NOT_ALLOWED = ErrorCode.of(
    RefundNotAllowed, "you made the transfer, but the wallet it paid does not allow refunds by the payer"
)
NOT_REFUNDABLE = ErrorCode.of(TransferNotRefundable, "the transfer is not completed, or is itself a refund")
FULLY_REFUNDED = ErrorCode.of(TransferFullyRefunded, "nothing remains to refund")
EXCEEDS = ErrorCode.of(RefundExceedsRemaining, "`amount_minor` is more than what remains refundable")
REFUND_KEY_REUSED = ErrorCode.of(IdempotencyKeyReused, "this key was used with another refund of this transfer")


class RefundCreateIn(serializers.Serializer):
    amount_minor = AmountField(required=False, help_text="Default: all that remains refundable.")


class RefundCollectionView(APIView):
    @extend_schema(
        operation_id="transfers_refunds_create",
        summary="Refund a completed transfer, whole or in part: a new transfer from its payee back to its payer",
        description="The answer is the refund's own transfer (`refund_of` names the original), 201 once terminal"
        " (`completed`, or `failed` with the reason: the payee's wallet lacks the funds or is frozen, and"
        " nothing moved), 202 while the saga credits the payer. The refunds of a transfer never add up to more"
        " than its amount, however many run at once. Who may refund: the owner of the wallet that was paid,"
        " and the client that made the transfer where that wallet allows it (`payer_may_refund`). The answer"
        " is stored with the key: a repeat replays it byte for byte.",
        request=RefundCreateIn,
        parameters=[ORIGINAL_ID, IDEMPOTENCY_KEY_HEADER, replayed_header(201, 202)],
        responses={
            201: TransferOut,
            202: TransferOut,
            **error_responses(
                IDEMPOTENCY_KEY_MISSING, IDEMPOTENCY_KEY_INVALID, INVALID_AMOUNT, *JSON_BODY_ERRORS, NOT_ALLOWED,
                ORIGINAL_NOT_FOUND, NOT_FOUND, NOT_REFUNDABLE, FULLY_REFUNDED, EXCEEDS, REFUND_KEY_REUSED,
            ),
        },
        extensions=response_links(TRANSFER_LINKS, 201, 202),
    )  # fmt: skip
    @waits_out_moves  # every step is idempotent by key: a run refused by a move's fence runs again
    def post(self, request: Request, transfer_id: str) -> HttpResponse:
        key = idempotency_key(request)
        raw = request.data
        if not isinstance(raw, dict):
            raise InvalidTransfer(Invalid("parameter_invalid", "The body must be a JSON object.", None))
        amount: int | None = None
        if "amount_minor" in raw:
            parsed = parse_amount(raw["amount_minor"])
            if isinstance(parsed, Invalid):
                raise InvalidTransfer(parsed)
            amount = parsed
        original_id = routable_id(transfer_id)
        if original_id is None:
            raise TransferNotFound(param="transfer_id")  # no id this API issued
        answer = refund_create(
            RefundRequest(cast(int, request.user.id), original_id, amount, key), render=render_transfer
        )
        return stored_answer(answer.status, answer.body, replayed=answer.replayed)
