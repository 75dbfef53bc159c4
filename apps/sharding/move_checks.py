"""Comparing a bucket range on two shards: per bucket and table, row count, money sum, content hash."""

from __future__ import annotations

from typing import Any

from apps.sharding.placement import BUCKET_COLUMNS

# The money column summed per table (the hash covers every column anyway).
MONEY_COLUMNS = {
    "ledger_wallet": "balance_minor",
    "ledger_entry": "amount_minor",
    "ledger_movement_key": "amount_minor",
    "transfers_transfer": "amount_minor",
    "transfers_payee_credit": "amount_minor",
    "holds_hold": "amount_minor",
    "refunds_refund": "amount_minor",
}

# What the hash covers where it is not the whole row: an event's `txid` is the transaction
# that wrote it on this shard (a copy's is the copying transaction's), not part of the event.
HASHED_ROW = {
    "events_event": "(t.id, t.client_id, t.type, t.object_id, t.seq, t.data, t.created_at)",
}

# (table, bucket) -> (rows, money, hash)
Aggregates = dict[tuple[str, int], tuple[int, int, int]]


def aggregates_sql(table: str, first: int, last: int) -> str:
    column = BUCKET_COLUMNS[table]
    money = MONEY_COLUMNS.get(table)
    money_sum = f"COALESCE(sum({money}), 0)" if money else "0"
    # hashtext of the whole row's text: order-independent when summed, and cheap.
    return (
        f"SELECT sharding_bucket({column}), count(*), {money_sum},"  # noqa: S608
        f" COALESCE(sum(hashtext({HASHED_ROW.get(table, 't')}::text)::bigint), 0)"
        f" FROM {table} t WHERE sharding_bucket({column}) BETWEEN {int(first)} AND {int(last)} GROUP BY 1"
    )


def range_aggregates(conn: Any, first: int, last: int, *, own_snapshot: bool = True) -> Aggregates:
    """All tables of the range, read in one repeatable-read snapshot (its own, or the open one's)."""
    found: Aggregates = {}

    def read() -> None:
        for table in BUCKET_COLUMNS:
            for bucket, rows, money, digest in conn.execute(aggregates_sql(table, first, last)).fetchall():
                found[(table, bucket)] = (int(rows), int(money), int(digest))

    if not own_snapshot:
        read()
        return found
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        read()
    return found


def differences(source: Aggregates, target: Aggregates) -> list[str]:
    found = []
    for key in sorted(set(source) | set(target)):
        if source.get(key) != target.get(key):
            table, bucket = key
            found.append(f"{table} bucket {bucket}: source {source.get(key)} target {target.get(key)}")
    return found


BALANCES_SQL = """
SELECT w.id, w.balance_minor, w.last_entry_seq, COALESCE(x.total, 0), COALESCE(x.n, 0)
  FROM ledger_wallet w
  LEFT JOIN LATERAL (SELECT sum(e.amount_minor) AS total, count(*) AS n FROM ledger_entry e
                      WHERE e.wallet_id = w.id) x ON true
 WHERE sharding_bucket(w.id) BETWEEN %s AND %s
   AND (w.balance_minor <> COALESCE(x.total, 0) OR w.last_entry_seq <> COALESCE(x.n, 0))
 LIMIT 20
"""


def balance_mismatches(conn: Any, first: int, last: int) -> list[str]:
    """Wallets of the range whose balance is not the sum of their entries (one snapshot)."""
    rows = conn.execute(BALANCES_SQL, [first, last]).fetchall()
    return [f"wallet {w}: balance {b} (seq {s}) but entries sum {t} ({n})" for w, b, s, t, n in rows]
