"""Validation of a transfer request body, shared by the single and the batch endpoints.

Plain Python rather than a DRF serializer: it runs for every transfer (up to 1,000 per
batch request), and it must give both endpoints the same codes. `TransferCreateIn` still
describes the body in the OpenAPI schema.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from apps.common.api import MAX_MINOR_AMOUNT
from apps.common.errors import DomainError
from apps.common.metadata import description_problem, metadata_problem
from apps.ledger.currencies import is_supported_currency
from apps.sharding.ids import InvalidId, bucket_of, parse_id
from apps.sharding.routing import shard_map
from apps.transfers.creation import TransferRequest

REQUIRED_FIELDS = ("from", "to", "amount_minor", "currency")


@dataclass(frozen=True)
class Invalid:
    code: str
    message: str
    param: str | None
    status: int = 400


class InvalidTransfer(DomainError):
    """An `Invalid` raised or returned as an API error."""

    def __init__(self, invalid: Invalid) -> None:
        super().__init__(invalid.message, param=invalid.param)
        self.code, self.status = invalid.code, invalid.status


def _wallet_id(raw: object) -> uuid.UUID | None:
    if not isinstance(raw, str):
        return None
    try:
        wallet_id = parse_id(raw)
    except InvalidId:
        return None
    return wallet_id if bucket_of(wallet_id) < shard_map().bucket_count else None


def valid_idempotency_key(key: object) -> bool:
    return isinstance(key, str) and 1 <= len(key) <= 255 and all(32 <= ord(c) < 127 for c in key)


def parse_amount(amount: object) -> int | Invalid:
    """An `amount_minor`: a JSON integer (not a boolean) in 1..2^63-1."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= MAX_MINOR_AMOUNT:
        return Invalid("invalid_amount", "Must be a JSON integer from 1 to 2^63-1, in minor units.", "amount_minor")
    return amount


def parse_transfer_body(client_id: int, raw: object, key: str) -> TransferRequest | Invalid:
    if not isinstance(raw, dict):
        return Invalid("parameter_invalid", "The body must be a JSON object.", None)
    for field in REQUIRED_FIELDS:
        if field not in raw:
            return Invalid("parameter_missing", "This field is required.", field)
    payer_id, payee_id = _wallet_id(raw["from"]), _wallet_id(raw["to"])
    if payer_id is None:
        return Invalid("parameter_invalid", "Not a wallet id.", "from")
    if payee_id is None:
        return Invalid("parameter_invalid", "Not a wallet id.", "to")
    amount = parse_amount(raw["amount_minor"])
    if isinstance(amount, Invalid):
        return amount
    currency = raw["currency"]
    if not isinstance(currency, str) or not is_supported_currency(currency):
        return Invalid("unsupported_currency", f"{currency!r} is not an ISO 4217 currency code.", "currency")
    if payer_id == payee_id:
        return Invalid("same_wallet", "A transfer needs two different wallets.", "to")
    description, metadata = raw.get("description"), raw.get("metadata")
    if problem := description_problem(description):
        return Invalid("parameter_invalid", problem, "description")
    if metadata is not None and (problem := metadata_problem(metadata)):
        return Invalid("parameter_invalid", problem, "metadata")
    return TransferRequest(client_id, payer_id, payee_id, amount, currency, key, description, metadata)
