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
BALANCE_LIMIT_EXCEEDED = ErrorCode.of(BalanceLimitExceeded, "the balance would pass 2^63-1 minor units")
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
    WALLET_FROZEN,
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
