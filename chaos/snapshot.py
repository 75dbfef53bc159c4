"""The shards' truth after the run: transfers with their histories, idempotency keys, entries, balances.

Read straight from every shard's primary with SQL (the harness is not a client here), once
every transfer is terminal, so nothing moves while it is read; only rows of the buckets each
shard serves (a bucket move leaves a fenced copy until its clean-up).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import DatabaseError, connections

from apps.sharding.routing import shard_aliases


@dataclass(frozen=True)
class TransferRow:
    id: str
    payer: str
    payee: str
    amount: int
    currency: str
    status: str
    reason: str | None
    attempts: int
    last_error: str
    parked: bool
    history: tuple[str, ...] = ()  # every status it went through, in order

    @property
    def terminal(self) -> bool:
        return self.status in ("completed", "failed")


@dataclass(frozen=True)
class EntryRow:
    wallet: str
    kind: str
    amount: int  # signed: debits and withdrawals are negative


@dataclass
class Snapshot:
    transfers: dict[str, TransferRow] = field(default_factory=dict)
    keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (payer, idempotency key) -> transfer id
    entries: dict[str, list[EntryRow]] = field(default_factory=lambda: defaultdict(list))  # by reference
    balances: dict[str, tuple[int, str]] = field(default_factory=dict)  # wallet -> (balance, currency)


def _rows(alias: str, sql: str, params: list[object] | None = None) -> list[tuple]:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def take_snapshot(client_id: int, timeout: float = 60) -> Snapshot:
    """Read every shard; a shard restarted under this process's connection is retried until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _read_shards(client_id)
        except DatabaseError:
            if time.monotonic() > deadline:
                raise
            connections.close_all()
            time.sleep(1)


def _read_shards(client_id: int) -> Snapshot:
    snap = Snapshot()
    for alias in shard_aliases():
        histories: dict[str, list[str]] = defaultdict(list)
        for tid, status in _rows(
            alias,
            "SELECT transfer_id::text, to_status FROM transfers_event WHERE sharding_serves(transfer_id) ORDER BY id",
        ):
            histories[tid].append(status)
        for row in _rows(
            alias,
            "SELECT id::text, payer_id::text, payee_id::text, amount_minor, currency, status, failure_reason,"
            " attempts, last_error, parked_at IS NOT NULL FROM transfers_transfer WHERE sharding_serves(id)",
        ):
            snap.transfers[row[0]] = TransferRow(*row, history=tuple(histories[row[0]]))
        for payer, key, tid in _rows(
            alias,
            "SELECT payer_id::text, key, transfer_id::text FROM transfers_idempotency"
            " WHERE client_id = %s AND sharding_serves(payer_id)",
            [client_id],
        ):
            snap.keys[(payer, key)] = tid
        for wallet, kind, amount, reference in _rows(
            alias,
            "SELECT wallet_id::text, kind, amount_minor, reference FROM ledger_entry WHERE sharding_serves(wallet_id)",
        ):
            snap.entries[reference].append(EntryRow(wallet, kind, amount))
        for wallet, balance, currency in _rows(
            alias, "SELECT id::text, balance_minor, currency FROM ledger_wallet WHERE sharding_serves(id)"
        ):
            snap.balances[wallet] = (balance, currency)
    return snap


def in_flight() -> list[TransferRow]:
    """Transfers not yet completed or failed, on every shard (parked ones included)."""
    found = []
    for alias in shard_aliases():
        for row in _rows(
            alias,
            "SELECT id::text, payer_id::text, payee_id::text, amount_minor, currency, status, failure_reason,"
            " attempts, last_error, parked_at IS NOT NULL FROM transfers_transfer"
            " WHERE status IN ('pending', 'debited', 'refunding') AND sharding_serves(id) ORDER BY id",
        ):
            found.append(TransferRow(*row))
    return found
