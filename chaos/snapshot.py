"""The shards' truth after the run: transfers with their histories, idempotency keys, entries, balances.

Read straight from every shard's primary with SQL (the harness is not a client here), once
every transfer is terminal, so nothing moves while it is read; only rows of the buckets each
shard serves (a bucket move leaves a fenced copy until its clean-up).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connections

from apps.sharding.routing import refresh_shard_map, shard_aliases


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
    refund_of: str | None = None
    amount_refunded: int = 0
    history: tuple[str, ...] = ()  # every status it went through, in order

    @property
    def terminal(self) -> bool:
        return self.status in ("completed", "failed")


@dataclass(frozen=True)
class EntryRow:
    wallet: str
    kind: str
    amount: int  # signed: debits and withdrawals are negative


@dataclass(frozen=True)
class HoldRow:
    id: str
    payer: str
    payee: str
    amount: int
    status: str
    reason: str | None
    captured: int | None
    transfer_id: str | None
    key: str


@dataclass(frozen=True)
class RefundRow:
    original: str
    transfer_id: str
    client: int
    amount: int
    status: str
    reason: str | None
    key: str


@dataclass
class Snapshot:
    transfers: dict[str, TransferRow] = field(default_factory=dict)
    keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (payer, idempotency key) -> transfer id
    entries: dict[str, list[EntryRow]] = field(default_factory=lambda: defaultdict(list))  # by reference
    balances: dict[str, tuple[int, str]] = field(default_factory=dict)  # wallet -> (balance, currency)
    duplicates: list[str] = field(default_factory=list)  # rows served by two shards: two owners of one bucket
    holds: dict[str, HoldRow] = field(default_factory=dict)
    refunds: dict[str, RefundRow] = field(default_factory=dict)  # by the refund's transfer id
    client_id: int = 0  # the requesting client's: its idempotency records and refunds are the run's


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
    snap = Snapshot(client_id=client_id)
    for alias in shard_aliases():
        histories: dict[str, list[str]] = defaultdict(list)
        # A transfer's statuses only move forward: its history in that order (serial ids are per shard).
        for tid, status in _rows(
            alias,
            "SELECT transfer_id::text, to_status FROM transfers_event WHERE sharding_serves(transfer_id)"
            " ORDER BY transfer_id, CASE to_status WHEN 'pending' THEN 0 WHEN 'debited' THEN 1"
            " WHEN 'refunding' THEN 2 ELSE 3 END, created_at, id",
        ):
            histories[tid].append(status)
        for row in _rows(
            alias,
            "SELECT id::text, payer_id::text, payee_id::text, amount_minor, currency, status, failure_reason,"
            " attempts, last_error, parked_at IS NOT NULL, refund_of::text, amount_refunded FROM transfers_transfer"
            " WHERE sharding_serves(id)",
        ):
            _keep(snap, snap.transfers, row[0], TransferRow(*row, history=tuple(histories[row[0]])), alias)
        for payer, key, tid in _rows(
            alias,
            "SELECT payer_id::text, key, transfer_id::text FROM transfers_idempotency"
            " WHERE client_id = %s AND sharding_serves(payer_id)",
            [client_id],
        ):
            _keep(snap, snap.keys, (payer, key), tid, alias)
        for wallet, kind, amount, reference in _rows(
            alias,
            "SELECT wallet_id::text, kind, amount_minor, reference FROM ledger_entry WHERE sharding_serves(wallet_id)",
        ):
            snap.entries[reference].append(EntryRow(wallet, kind, amount))
        for wallet, balance, currency in _rows(
            alias, "SELECT id::text, balance_minor, currency FROM ledger_wallet WHERE sharding_serves(id)"
        ):
            _keep(snap, snap.balances, wallet, (balance, currency), alias)
        for row in _rows(
            alias,
            "SELECT id::text, payer_id::text, payee_id::text, amount_minor, status, failure_reason, captured_minor,"
            " transfer_id::text, idempotency_key FROM holds_hold WHERE sharding_serves(id)",
        ):
            _keep(snap, snap.holds, row[0], HoldRow(*row), alias)
        for row in _rows(
            alias,
            "SELECT original_id::text, transfer_id::text, client_id, amount_minor, status, failure_reason,"
            " idempotency_key FROM refunds_refund WHERE sharding_serves(id)",
        ):
            _keep(snap, snap.refunds, row[1], RefundRow(*row), alias)
    return snap


def _keep(snap: Snapshot, rows: dict[Any, Any], key: Any, value: Any, alias: str) -> None:
    """A row the snapshot already holds from another shard is a violation, never overwritten."""
    if key in rows:
        snap.duplicates.append(f"{key} is served by two shards (again on {alias})")
        return
    rows[key] = value


def ownership_problems() -> list[str]:
    """Each bucket owned by exactly one shard, the one the control database's map names."""
    current = refresh_shard_map()
    owners: dict[int, list[str]] = defaultdict(list)
    for alias in current.aliases:
        for (bucket,) in _rows(alias, "SELECT bucket FROM sharding_bucket_owner WHERE state = 'owned'"):
            owners[bucket].append(alias)
    problems = []
    for bucket in range(current.bucket_count):
        if owners[bucket] != [current.alias_for_bucket(bucket)]:
            problems.append(
                f"bucket {bucket}: owned by {owners[bucket]}, the map says {current.alias_for_bucket(bucket)}"
            )
    return problems[:50]


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
        # A refund still pending is money on its way too (its transfer may not exist yet: the
        # resumption job creates it when its request died after the reservation).
        for transfer_id, amount in _rows(
            alias,
            "SELECT transfer_id::text, amount_minor FROM refunds_refund WHERE status = 'pending'"
            " AND sharding_serves(id) ORDER BY transfer_id",
        ):
            found.append(TransferRow(transfer_id, "", "", amount, "USD", "refund pending", None, 0, "", False))
    return found
