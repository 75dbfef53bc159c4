"""reconcile: does the audit store hold exactly what the shards hold?

Compared, per shard and globally:
- every wallet: present on both sides, same shard, balance, currency, status, entry count,
  entry sum and last entry seq;
- per shard: the number of ledger entries, transfers and status transitions;
- per currency: balances, deposits and withdrawals.

The store trails the shards by the CDC lag, so a comparison that finds differences is
repeated (for up to `wait` seconds) before they are reported. It reads every wallet
into memory: right for tests and modest stores; at production scale compare per-shard
aggregates by bucket range instead.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db import connections

from apps.sharding.placement import BUCKET_COLUMNS
from apps.sharding.routing import shard_aliases

# What is counted per shard: name -> (shard table, audit table).
COUNTED = {
    "entries": ("ledger_entry", "ledger_entries"),
    "transfers": ("transfers_transfer", "transfers"),
    "transitions": ("transfers_event", "transfer_transitions"),
    "payee_credits": ("transfers_payee_credit", "payee_credits"),
}
WalletState = tuple[str, int, str, str, int, int, int]  # shard, balance, currency, status, entries, sum, max seq


@dataclass
class Snapshot:
    wallets: dict[uuid.UUID, WalletState] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (shard, what) -> n
    totals: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (currency, what) -> sum


@dataclass
class ReconcileReport:
    differences: list[str]
    wallets: int
    entries: int
    attempts: int

    @property
    def ok(self) -> bool:
        return not self.differences


def _shard_rows(alias: str, sql: str) -> list[tuple[Any, ...]]:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def read_shards() -> Snapshot:
    snap = Snapshot()
    for alias in shard_aliases():
        for wallet_id, balance, currency, status, entries, total, max_seq in _shard_rows(
            alias,
            "SELECT w.id, w.balance_minor, w.currency, w.status, count(e.id), COALESCE(sum(e.amount_minor), 0),"
            " COALESCE(max(e.seq), 0) FROM ledger_wallet w LEFT JOIN ledger_entry e ON e.wallet_id = w.id"
            " WHERE sharding_serves(w.id) GROUP BY w.id",
        ):
            snap.wallets[wallet_id] = (alias, balance, currency, status, entries, int(total), max_seq)
        for what, (table, _) in COUNTED.items():
            column = BUCKET_COLUMNS[table]
            [(n,)] = _shard_rows(alias, f"SELECT count(*) FROM {table} WHERE sharding_serves({column})")  # noqa: S608
            snap.counts[(alias, what)] = n
        for currency, kind, total in _shard_rows(
            alias,
            "SELECT w.currency, e.kind, sum(e.amount_minor) FROM ledger_entry e"
            " JOIN ledger_wallet w ON w.id = e.wallet_id WHERE e.kind IN ('deposit', 'withdrawal')"
            " AND sharding_serves(w.id) GROUP BY w.currency, e.kind",
        ):
            snap.totals[(currency, kind)] += int(total)
    for _, balance, currency, *_rest in snap.wallets.values():
        snap.totals[(currency, "balances")] += balance
    return snap


def read_store(client: Any) -> Snapshot:
    snap = Snapshot()
    result = client.query(
        "SELECT wallet_id, shard, balance_minor, currency, status, entry_count, entries_sum_minor, last_entry_seq,"
        " max_seq FROM audit.wallet_balances AS b LEFT JOIN (SELECT wallet_id, max(entry_seq) AS max_seq"
        " FROM audit.ledger_entries FINAL WHERE is_deleted = 0 GROUP BY wallet_id) AS m ON m.wallet_id = b.wallet_id"
    )
    for wallet_id, shard, balance, currency, status, entries, total, _last_seq, max_seq in result.result_rows:
        snap.wallets[wallet_id] = (shard, balance, currency, status, entries, int(total), max_seq or 0)
    for what, (_, table) in COUNTED.items():
        rows = client.query(
            f"SELECT shard, count() FROM audit.{table} FINAL WHERE is_deleted = 0 GROUP BY shard"  # noqa: S608
        ).result_rows
        for shard, n in rows:
            snap.counts[(shard, what)] = n
    for currency, balances, deposits, withdrawals in client.query(
        "SELECT currency, balances_minor, deposits_minor, withdrawals_minor FROM audit.currency_totals"
    ).result_rows:
        snap.totals[(currency, "balances")] = int(balances)
        snap.totals[(currency, "deposit")] = int(deposits)
        snap.totals[(currency, "withdrawal")] = -int(withdrawals)  # the shards' sum is negative
    return snap


_FIELDS = ("shard", "balance_minor", "currency", "status", "entry count", "entry sum", "last entry seq")


def compare(shards: Snapshot, store: Snapshot) -> list[str]:
    differences = []
    for wallet_id in sorted(shards.wallets.keys() - store.wallets.keys(), key=str):
        differences.append(f"wallet {wallet_id} ({shards.wallets[wallet_id][0]}) is missing from the audit store")
    for wallet_id in sorted(store.wallets.keys() - shards.wallets.keys(), key=str):
        differences.append(f"wallet {wallet_id} is in the audit store but on no shard")
    for wallet_id in sorted(shards.wallets.keys() & store.wallets.keys(), key=str):
        ours, theirs = shards.wallets[wallet_id], store.wallets[wallet_id]
        for name, a, b in zip(_FIELDS, ours, theirs, strict=True):
            if a != b:
                differences.append(f"wallet {wallet_id}: {name} is {a} on the shard, {b} in the audit store")
    for key in sorted(shards.counts.keys() | store.counts.keys()):
        a, b = shards.counts.get(key, 0), store.counts.get(key, 0)
        if a != b:
            differences.append(f"{key[0]}: {a} {key[1]} on the shard, {b} in the audit store")
    for key in sorted(shards.totals.keys() | store.totals.keys()):
        a, b = shards.totals.get(key, 0), store.totals.get(key, 0)
        if a != b:
            differences.append(f"{key[0]} {key[1]}: {a} on the shards, {b} in the audit store")
    return differences


def reconcile(client: Any, *, wait: float = 10.0) -> ReconcileReport:
    """Compare until the two sides agree or `wait` seconds have passed."""
    deadline = time.monotonic() + wait
    attempts = 0
    while True:
        attempts += 1
        shards = read_shards()
        store = read_store(client)
        differences = compare(shards, store)
        if not differences or time.monotonic() >= deadline:
            entries = sum(n for (_, what), n in shards.counts.items() if what == "entries")
            return ReconcileReport(differences, len(shards.wallets), entries, attempts)
        time.sleep(0.5)
