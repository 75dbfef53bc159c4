"""Reads from the shards. Balances are strong reads from the shard's primary."""

from __future__ import annotations

import heapq
import uuid
from datetime import datetime, timedelta

from apps.common.db import fast_cursor
from apps.ledger.errors import WalletNotFound
from apps.ledger.models import LedgerEntry, Wallet
from apps.sharding.fence import read_by_id
from apps.sharding.routing import alias_for_id, shard_aliases


def wallet_get(*, wallet_id: uuid.UUID, owner_id: int | None = None) -> Wallet:
    """The wallet, from its shard; WalletNotFound also when it belongs to another client."""

    def read(alias: str) -> Wallet | None:
        wallets = Wallet.objects.using(alias).filter(id=wallet_id).extra(where=["sharding_serves(ledger_wallet.id)"])
        if owner_id is not None:
            wallets = wallets.filter(owner_id=owner_id)
        return wallets.first()

    wallet = read_by_id(wallet_id, read)
    if wallet is None:
        raise WalletNotFound(param="wallet_id")
    return wallet


def wallet_currency(*, wallet_id: uuid.UUID, owner_id: int) -> str:
    """The currency of a client's wallet, in one indexed read (a hot path: every transfer)."""

    def read(alias: str) -> str | None:
        with fast_cursor(alias) as cursor:
            cursor.execute(
                "SELECT currency FROM ledger_wallet WHERE id = %s AND owner_id = %s AND sharding_serves(id)",
                [wallet_id, owner_id],
            )
            row = cursor.fetchone()
        return row[0] if row else None

    currency = read_by_id(wallet_id, read)
    if currency is None:
        raise WalletNotFound(param="wallet_id")
    return currency


def wallet_list(*, owner_id: int, before_id: uuid.UUID | None, limit: int) -> list[Wallet]:
    """A client's wallets, newest first, from every shard merged by id (ids are time-ordered)."""
    per_shard = []
    for alias in shard_aliases():
        # Only the wallets this shard serves: not a copy arriving or left by a move.
        wallets = (
            Wallet.objects.using(alias).filter(owner_id=owner_id).extra(where=["sharding_serves(ledger_wallet.id)"])
        )
        if before_id is not None:
            wallets = wallets.filter(id__lt=before_id)
        per_shard.append(list(wallets.order_by("-id")[:limit]))
    merged = heapq.merge(*per_shard, key=lambda w: w.id, reverse=True)
    return [wallet for _, wallet in zip(range(limit), merged, strict=False)]


# Entries are stamped before their wallet's lock is taken, so a later entry can carry an earlier
# time, by at most a request's lock wait (lock_timeout 5 s, a few retries): well within this.
STAMP_DISORDER = timedelta(seconds=60)


def entry_at(*, wallet_id: uuid.UUID, last_seq: int, at: datetime) -> LedgerEntry | None:
    """The wallet's last entry (by seq) stamped at or before `at`, exactly.

    A binary search over the (wallet, seq) index for the last entry stamped before
    `at + STAMP_DISORDER` bounds the answer from above (no entry after it can be stamped at or
    before `at`); one backward index scan from there finds it: log2(entries) probes, whatever
    the wallet's history."""
    alias = alias_for_id(wallet_id)
    try:
        bound = at + STAMP_DISORDER
    except OverflowError:  # the last representable minute: every entry is before it
        bound = datetime.max.replace(tzinfo=at.tzinfo)
    with fast_cursor(alias) as cursor:
        low, high = 0, last_seq  # created(low) <= bound (seq 0: before any entry); created(high + 1) > bound
        while low < high:
            middle = (low + high + 1) // 2
            cursor.execute("SELECT created_at FROM ledger_entry WHERE wallet_id = %s AND seq = %s", [wallet_id, middle])
            row = cursor.fetchone()
            if row is not None and row[0] <= bound:
                low = middle
            else:
                high = middle - 1
    found = (
        LedgerEntry.objects.using(alias)
        .filter(wallet_id=wallet_id, seq__lte=low, created_at__lte=at)
        .order_by("-seq")
        .first()
    )
    return found


def entry_list(*, wallet_id: uuid.UUID, before_seq: int | None, limit: int) -> list[LedgerEntry]:
    """A wallet's entries, newest first (by the wallet's own entry sequence)."""
    entries = LedgerEntry.objects.using(alias_for_id(wallet_id)).filter(wallet_id=wallet_id)
    if before_seq is not None:
        entries = entries.filter(seq__lt=before_seq)
    return list(entries.order_by("-seq")[:limit])
