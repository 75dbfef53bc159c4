"""The transfer endpoints' pieces of the OpenAPI schema: error codes, pages, links (see apps.common.openapi)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer

from apps.common.errors import IdempotencyKeyReused, InvalidRequest
from apps.common.openapi import (
    METHOD_NOT_ALLOWED,
    PARAMETER_INVALID,
    ErrorCode,
    id_parameter,
    link,
    next_page_link,
    page_of,
)
from apps.ledger.api.schema import WALLET_NOT_FOUND
from apps.ledger.errors import CurrencyMismatch
from apps.transfers.api.serializers import PaidTransferOut, ReceivedTransferOut
from apps.transfers.errors import IdempotencyRequestInProgress, TransferNotFound

TRANSFER_ID = id_parameter("transfer_id", "One of your transfers.")
WAIT = OpenApiParameter(
    "wait",
    {"type": "number", "minimum": 0, "maximum": 30},
    description="Seconds to wait for a terminal status before answering: 201 if it got there, else 202.",
)

TRANSFER_NOT_FOUND = ErrorCode.of(TransferNotFound, "no such transfer, or another client's")
BATCH_URL = METHOD_NOT_ALLOWED.because("`transfer_id` is `batch`: that URL takes POST only")
PAYER_NOT_FOUND = WALLET_NOT_FOUND.because("`from` is not one of your wallets")
NOT_A_WALLET_ID = PARAMETER_INVALID.because("the body is not a JSON object, or `from` or `to` is not a wallet id")
SAME_WALLET = ErrorCode(400, "same_wallet", "`from` and `to` are the same wallet")
WAIT_INVALID = ErrorCode.of(InvalidRequest, "`wait` is not a number of seconds in 0..30")
BATCH_INVALID = ErrorCode.of(InvalidRequest, 'the body is not `{"transfers": [...]}` with 1 to 1,000 items')
IN_PROGRESS = ErrorCode.of(
    IdempotencyRequestInProgress,
    "the first request with this key is still waiting (`wait`): retry shortly; once it is gone for a minute "
    "(its process died), the transfer as it then stands is the key's answer",
)
TRANSFER_KEY_REUSED = ErrorCode.of(IdempotencyKeyReused, "this key was used with another transfer from this wallet")
PAYER_CURRENCY_MISMATCH = ErrorCode.of(CurrencyMismatch, "`currency` is not the paying wallet's")

WalletTransferOut = PolymorphicProxySerializer(
    component_name="WalletTransfer",
    serializers={"out": PaidTransferOut, "in": ReceivedTransferOut},
    resource_type_field_name="direction",
    many=True,
)
TransferPage = page_of(
    WalletTransferOut, "TransferPage", "Transfers the wallet paid (`out`) or received (`in`), by transfer id"
)
DIRECTION = OpenApiParameter(
    "direction",
    {"type": "string", "enum": ["out", "in", "all"], "default": "out"},
    description="`out`: transfers the wallet paid; `in`: transfers credited to it, as their credits say them;"
    " `all`: both, merged by transfer id.",
)
DIRECTION_INVALID = ErrorCode.of(InvalidRequest, "`direction` is not `out`, `in` or `all`")
TRANSFER_PAGE_LINKS = next_page_link("wallets_transfers_list", wallet_id="$request.path.wallet_id")

TRANSFER_LINKS = {
    "GetTransfer": link("transfers_retrieve", "The transfer and its status history.", transfer_id="$response.body#/id"),
}
BATCH_LINKS = {
    "GetFirstTransfer": link(
        "transfers_retrieve",
        "The first item's transfer (when it was not rejected).",
        transfer_id="$response.body#/results/0/transfer/id",
    ),
}
