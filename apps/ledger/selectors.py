"""Reads from the shards. Balances are strong reads from the shard's primary."""

from __future__ import annotations

import heapq
import uuid

from apps.common.db import fast_cursor
from apps.ledger.errors import WalletNotFound
from apps.ledger.models import LedgerEntry, Wallet
from apps.sharding.routing import alias_for_id, shard_aliases


def wallet_get(*, wallet_id: uuid.UUID, owner_id: int | None = None) -> Wallet:
    """The wallet, from its shard; WalletNotFound also when it belongs to another client."""
    wallets = Wallet.objects.using(alias_for_id(wallet_id)).filter(id=wallet_id)
    if owner_id is not None:
        wallets = wallets.filter(owner_id=owner_id)
    wallet = wallets.first()
    if wallet is None:
        raise WalletNotFound(param="wallet_id")
    return wallet


def wallet_currency(*, wallet_id: uuid.UUID, owner_id: int) -> str:
    """The currency of a client's wallet, in one indexed read (a hot path: every transfer)."""
    with fast_cursor(alias_for_id(wallet_id)) as cursor:
        cursor.execute("SELECT currency FROM ledger_wallet WHERE id = %s AND owner_id = %s", [wallet_id, owner_id])
        row = cursor.fetchone()
    if row is None:
        raise WalletNotFound(param="wallet_id")
    return row[0]


def wallet_list(*, owner_id: int, before_id: uuid.UUID | None, limit: int) -> list[Wallet]:
    """A client's wallets, newest first, from every shard merged by id (ids are time-ordered)."""
    per_shard = []
    for alias in shard_aliases():
        wallets = Wallet.objects.using(alias).filter(owner_id=owner_id)
        if before_id is not None:
            wallets = wallets.filter(id__lt=before_id)
        per_shard.append(list(wallets.order_by("-id")[:limit]))
    merged = heapq.merge(*per_shard, key=lambda w: w.id, reverse=True)
    return [wallet for _, wallet in zip(range(limit), merged, strict=False)]


def entry_list(*, wallet_id: uuid.UUID, before_seq: int | None, limit: int) -> list[LedgerEntry]:
    """A wallet's entries, newest first (by the wallet's own entry sequence)."""
    entries = LedgerEntry.objects.using(alias_for_id(wallet_id)).filter(wallet_id=wallet_id)
    if before_seq is not None:
        entries = entries.filter(seq__lt=before_seq)
    return list(entries.order_by("-seq")[:limit])
