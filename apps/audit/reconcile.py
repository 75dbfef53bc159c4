"""reconcile: does the audit store hold exactly what the shards hold?

Compared, per shard and globally:
- every wallet: present on both sides, same balance, currency, status, entry count, entry
  sum and last entry seq;
- per shard: the number of ledger entries, transfers, status transitions and payee
  outcomes of the buckets it serves;
- per currency: balances, deposits and withdrawals.

Bucket moves: a shard's side counts only the rows of buckets it serves (`sharding_serves`,
so neither a copy arriving nor one a move left behind), and the store's rows are counted
by bucket and given to the shard that serves the bucket now. The store's `shard` column
says which shard's stream last wrote a row, which after a move need not be its owner, so
it is not compared. Either way a wallet, an entry or a transfer counts once, wherever its
bucket has gone.

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
from apps.sharding.routing import shard_aliases, shard_map

# What is counted per shard: name -> (shard table, audit table, the audit table's bucket column).
COUNTED = {
    "entries": ("ledger_entry", "ledger_entries", "wallet_id"),
    "transfers": ("transfers_transfer", "transfers", "transfer_id"),
    "transitions": ("transfers_event", "transfer_transitions", "transfer_id"),
    "payee_credits": ("transfers_payee_credit", "payee_credits", "payee_id"),
}
WalletState = tuple[int, str, str, int, int, int]  # balance, currency, status, entries, sum, max seq
# The bucket of an id in ClickHouse: the 12 bits after the version digit (apps.sharding.ids),
# the last three hex digits of the UUID's third group.
_STORE_BUCKET = "substring(toString({}), 16, 3)"


@dataclass
class Snapshot:
    wallets: dict[uuid.UUID, WalletState] = field(default_factory=dict)
    wallet_shards: dict[uuid.UUID, str] = field(default_factory=dict)  # where a shard serves it (for the report)
    counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (shard, what) -> n
    totals: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (currency, what) -> sum
    owners: dict[int, str] = field(default_factory=dict)  # bucket -> the shard that says it serves it


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
            snap.wallets[wallet_id] = (balance, currency, status, entries, int(total), max_seq)
            snap.wallet_shards[wallet_id] = alias
        for (bucket,) in _shard_rows(alias, "SELECT bucket FROM sharding_bucket_owner WHERE state = 'owned'"):
            snap.owners[bucket] = alias
        for what, (table, _, _) in COUNTED.items():
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
    for balance, currency, *_rest in snap.wallets.values():
        snap.totals[(currency, "balances")] += balance
    return snap


def read_store(client: Any, owners: dict[int, str]) -> Snapshot:
    """The store's side; its rows counted for the shard serving their bucket per `owners`
    (a bucket no shard serves, as during a move's switch, for its owner in the map)."""
    snap = Snapshot()
    result = client.query(
        "SELECT wallet_id, balance_minor, currency, status, entry_count, entries_sum_minor, last_entry_seq,"
        " max_seq FROM audit.wallet_balances AS b LEFT JOIN (SELECT wallet_id, max(entry_seq) AS max_seq"
        " FROM audit.ledger_entries FINAL WHERE is_deleted = 0 GROUP BY wallet_id) AS m ON m.wallet_id = b.wallet_id"
    )
    for wallet_id, balance, currency, status, entries, total, _last_seq, max_seq in result.result_rows:
        snap.wallets[wallet_id] = (balance, currency, status, entries, int(total), max_seq or 0)
    current = shard_map()
    for what, (_, table, column) in COUNTED.items():
        bucket = _STORE_BUCKET.format(column)
        rows = client.query(
            f"SELECT {bucket} AS bucket, count() FROM audit.{table} FINAL WHERE is_deleted = 0"  # noqa: S608
            " GROUP BY bucket"
        ).result_rows
        for hex_bucket, n in rows:
            number = int(hex_bucket, 16)
            owner = owners.get(number)
            if owner is None:
                owner = current.alias_for_bucket(number) if number < current.bucket_count else f"bucket {number}"
            snap.counts[(owner, what)] += n
    for currency, balances, deposits, withdrawals in client.query(
        "SELECT currency, balances_minor, deposits_minor, withdrawals_minor FROM audit.currency_totals"
    ).result_rows:
        snap.totals[(currency, "balances")] = int(balances)
        snap.totals[(currency, "deposit")] = int(deposits)
        snap.totals[(currency, "withdrawal")] = -int(withdrawals)  # the shards' sum is negative
    return snap


_FIELDS = ("balance_minor", "currency", "status", "entry count", "entry sum", "last entry seq")


def compare(shards: Snapshot, store: Snapshot) -> list[str]:
    differences = []
    for wallet_id in sorted(shards.wallets.keys() - store.wallets.keys(), key=str):
        differences.append(f"wallet {wallet_id} ({shards.wallet_shards[wallet_id]}) is missing from the audit store")
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
        store = read_store(client, shards.owners)
        differences = compare(shards, store)
        if not differences or time.monotonic() >= deadline:
            entries = sum(n for (_, what), n in shards.counts.items() if what == "entries")
            return ReconcileReport(differences, len(shards.wallets), entries, attempts)
        time.sleep(0.5)
