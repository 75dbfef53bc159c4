"""The ledger endpoints' pieces of the OpenAPI schema: error codes, pages, links (see apps.common.openapi)."""

from __future__ import annotations

from apps.common.errors import IdempotencyKeyReused
from apps.common.openapi import (
    IDEMPOTENCY_KEY_INVALID,
    IDEMPOTENCY_KEY_MISSING,
    INVALID_AMOUNT,
    JSON_BODY_ERRORS,
    NOT_FOUND,
    PARAMETER_MISSING,
    ErrorCode,
    id_parameter,
    link,
    next_page_link,
    page_of,
)
from apps.ledger.api.serializers import EntryOut, WalletOut
from apps.ledger.errors import BalanceLimitExceeded, InsufficientFunds, WalletFrozen, WalletNotFound

WALLET_ID = id_parameter("wallet_id", "One of your wallets.")

WALLET_NOT_FOUND = ErrorCode.of(WalletNotFound, "no such wallet, or another client's (never revealed)")
WALLET_FROZEN = ErrorCode.of(WalletFrozen, "the wallet is frozen")
INSUFFICIENT_FUNDS = ErrorCode.of(InsufficientFunds, "the balance is lower than the amount")
BALANCE_LIMIT_EXCEEDED = ErrorCode.of(
    BalanceLimitExceeded,
    "the balance, plus what the wallet has paid into transfers still in flight, would pass 2^63-1 minor units",
)
# A deposit's or withdrawal's refusal by the wallet's state is its key's answer, as a success is.
_KEYS_ANSWER = " (the key's answer: replayed, with `Idempotent-Replayed: true`, even once that changes)"
MOVEMENT_WALLET_FROZEN = WALLET_FROZEN.because(WALLET_FROZEN.when + _KEYS_ANSWER)
MOVEMENT_INSUFFICIENT_FUNDS = INSUFFICIENT_FUNDS.because(INSUFFICIENT_FUNDS.when + _KEYS_ANSWER)
MOVEMENT_BALANCE_LIMIT_EXCEEDED = BALANCE_LIMIT_EXCEEDED.because(BALANCE_LIMIT_EXCEEDED.when + _KEYS_ANSWER)
MOVEMENT_DESCRIPTION = (
    "A key's first answer, success or refusal by the wallet's state (`wallet_frozen`, `insufficient_funds`, "
    "`balance_limit_exceeded`), is its answer: the same request again gets it byte for byte, with "
    "`Idempotent-Replayed: true`, and moves no money. The key with another amount, or for the other kind of "
    "movement, is 422 `idempotency_key_reused`. Requests refused before they start (malformed input, "
    "`wallet_not_found`) are not recorded: fix them and send them again with the same key."
)
MOVEMENT_KEY_REUSED = ErrorCode.of(
    IdempotencyKeyReused,
    "this wallet already took this key with another amount, or for the other kind of movement "
    "(a deposit's key used for a withdrawal, or the reverse)",
)
# What a deposit or a withdrawal can answer besides its own refusal (insufficient funds, balance limit).
MOVEMENT_ERRORS = (
    IDEMPOTENCY_KEY_MISSING,
    IDEMPOTENCY_KEY_INVALID,
    PARAMETER_MISSING,
    INVALID_AMOUNT,
    *JSON_BODY_ERRORS,
    WALLET_NOT_FOUND,
    NOT_FOUND,
    MOVEMENT_WALLET_FROZEN,
    MOVEMENT_KEY_REUSED,
)

WalletPage = page_of(WalletOut, "WalletPage", "Your wallets, across every shard")
EntryPage = page_of(EntryOut, "EntryPage", "The wallet's ledger entries")

# Operations that take a wallet id, reachable from any response that holds one.
_WALLET_TARGETS = {
    "GetWallet": ("wallets_retrieve", "The wallet."),
    "GetBalance": ("wallets_balance_retrieve", "Its balance."),
    "ListEntries": ("wallets_entries_list", "Its ledger entries."),
    "Deposit": ("wallets_deposits_create", "Fund it."),
    "Withdraw": ("wallets_withdrawals_create", "Withdraw from it."),
    "ListTransfers": ("wallets_transfers_list", "The transfers it paid."),
}


def wallet_links(expression: str) -> dict[str, dict]:
    """Links to every operation on the wallet whose id `expression` gives, and to a transfer it pays."""
    links = {name: link(target, why, wallet_id=expression) for name, (target, why) in _WALLET_TARGETS.items()}
    links["CreateTransfer"] = link("transfers_create", "A transfer it pays.", body={"from": expression})
    return links


WALLET_LINKS = wallet_links("$response.body#/id")
ENTRY_LINKS = wallet_links("$response.body#/wallet_id")
WALLET_PAGE_LINKS = next_page_link("wallets_list")
ENTRY_PAGE_LINKS = next_page_link("wallets_entries_list", wallet_id="$request.path.wallet_id")
