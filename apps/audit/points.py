"""Consistent points: one snapshot per shard, its WAL position, and the store's view as of it.

A point is a `REPEATABLE READ READ ONLY` transaction on a shard whose first statement
takes the snapshot and, in the same statement, reads the WAL insert position L (every
transaction visible in the snapshot committed before L) and the snapshot itself
(xmin, xmax, running xids). Everything the shard side of `reconcile` reads runs in that
transaction, so it describes the shard at one moment however long it takes.

The store holds a shard's changes by commit position; "as of L" is every change with
`commit_lsn <= L`, except the transactions that were still committing when the snapshot
was taken: a commit record is written before the transaction becomes visible (with
`synchronous_commit` the gap is an fsync), so a transaction can have committed before L
and still be invisible. Those are found in `audit.changes` by their xid (running in the
snapshot, or started after it) and left out (`invisible`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from apps.audit.pgoutput import lsn_to_str, str_to_lsn
from apps.sharding.shardmap import DatabaseServer

# A transaction still committing at the snapshot wrote its commit record within the last
# 4 GiB of WAL; so few xids fit in that much WAL (each writes >= 40 bytes) that their 32-bit
# forms, as pgoutput sends them, cannot wrap around inside it.
INVISIBLE_WINDOW_BYTES = 1 << 32
_XID_MASK = (1 << 32) - 1


@dataclass
class ShardPoint:
    """One shard at one moment: an open snapshot and what the store needs to match it."""

    server: DatabaseServer
    conn: psycopg.Connection[Any]
    lsn: int  # L: WAL insert position at the snapshot (the as-of rule's bound)
    xmin: int
    xmax: int
    xip: list[int]
    owned: set[int]  # buckets the shard serves in the snapshot
    epoch: int  # the shard's stream epoch at L: the highest epoch of its 'own' markers
    # WAL flushed once every shard's snapshot was taken: what the store must hold. Flushed, not
    # inserted: the stream never goes past the flushed WAL, and an idle server can leave its
    # last records unflushed for long; every synchronous commit is flushed before it is visible.
    later_lsn: int = 0
    invisible: list[int] = field(default_factory=list)  # commit positions <= L not in the snapshot

    @property
    def alias(self) -> str:
        return self.server.alias

    def fresh_connection(self) -> psycopg.Connection[Any]:
        """Another session on the shard, outside the snapshot."""
        return _connect(self.server)

    def close(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        finally:
            self.conn.close()


def _connect(server: DatabaseServer) -> psycopg.Connection[Any]:
    # UTC: timestamps are compared as text with the store's.
    return psycopg.connect(
        server.conninfo(options="-c TimeZone=UTC", application_name="shardwallet_reconcile"), autocommit=True
    )


def open_point(server: DatabaseServer) -> ShardPoint:
    """Open the snapshot (BEGIN + its first statement) and read what it holds of the shard map."""
    conn = _connect(server)
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # The snapshot is taken by this first statement; the positions are read while it runs,
        # so they are after every commit the snapshot sees.
        row = conn.execute("SELECT pg_current_wal_insert_lsn()::text, pg_current_snapshot()::text").fetchone()
        assert row is not None  # noqa: S101
        xmin_text, xmax_text, xip_text = row[1].split(":")
        owned = {b for (b,) in conn.execute("SELECT bucket FROM sharding_bucket_owner WHERE state = 'owned'")}
        epoch_row = conn.execute(
            "SELECT coalesce(max(epoch), 0) FROM sharding_move_marker WHERE kind = 'own'"
        ).fetchone()
        return ShardPoint(
            server=server, conn=conn, lsn=str_to_lsn(row[0]), xmin=int(xmin_text), xmax=int(xmax_text),
            xip=[int(x) for x in xip_text.split(",") if x], owned=owned, epoch=int(epoch_row[0]) if epoch_row else 0,
        )  # fmt: skip
    except BaseException:
        conn.close()
        raise


def read_later_lsn(point: ShardPoint) -> None:
    """The shard's flushed WAL position now (a function, not bound to the snapshot)."""
    row = point.conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
    assert row is not None  # noqa: S101
    point.later_lsn = str_to_lsn(row[0])


@dataclass(frozen=True)
class StorePosition:
    confirmed_lsn: int
    tables: tuple[str, ...]


def store_positions(client: Any) -> dict[str, StorePosition]:
    """Per shard, the position up to which the store holds every change (`audit.stream_positions`)."""
    rows = client.query("SELECT shard, confirmed_lsn, tables FROM audit.stream_positions FINAL").result_rows
    return {shard: StorePosition(int(lsn), tuple(tables)) for shard, lsn, tables in rows}


def wait_confirmed(client: Any, targets: dict[str, int], timeout: float) -> dict[str, StorePosition]:
    """Poll until the store has confirmed `targets[shard]` for every shard or `timeout` s have
    passed; return the positions last seen (check them: a shard may still be short)."""
    deadline = time.monotonic() + timeout
    while True:
        positions = store_positions(client)
        short = [s for s, lsn in targets.items() if s not in positions or positions[s].confirmed_lsn < lsn]
        if not short or time.monotonic() >= deadline:
            return positions
        time.sleep(0.1)


def find_invisible(client: Any, point: ShardPoint) -> list[int]:
    """Commit positions <= L of transactions the snapshot does not see (running in it, or
    started after it): their changes are not part of the shard as of the point."""
    # The running xids are written into the SQL (numbers only): there can be too many for a URL.
    xip = ",".join(str(x & _XID_MASK) for x in point.xip)
    rows = client.query(
        "SELECT DISTINCT commit_lsn FROM audit.changes"  # noqa: S608
        " WHERE shard = {shard:String} AND commit_lsn > {low:UInt64} AND commit_lsn <= {lsn:UInt64} AND xid >= 3"
        f" AND (has(CAST([{xip}], 'Array(UInt32)'), xid)"
        " OR bitAnd(toUInt64(xid) + 4294967296 - {xmax:UInt64}, 4294967295) < 2147483648)",
        parameters={
            "shard": point.alias, "low": max(0, point.lsn - INVISIBLE_WINDOW_BYTES), "lsn": point.lsn,
            "xmax": point.xmax & _XID_MASK,
        },
    ).result_rows  # fmt: skip
    return sorted(int(lsn) for (lsn,) in rows)


def describe_lsn(lsn: int) -> str:
    return lsn_to_str(lsn)
