"""Stream epochs: what keeps row versions comparable across shards once buckets move.

A row's changes are ordered by its shard's WAL position, but after its bucket moves, its
later changes stream from the target, whose positions are unrelated to the source's. So
each change also carries the epoch of its shard's stream at the change's commit:

    stream_epoch(shard, commit_lsn) = the highest `epoch` of the shard's 'own' move markers
                                      whose `wal_lsn` < commit_lsn (0 if none)

and `version = (stream_epoch << 96) | (commit_lsn << 32) | seq`. Every change of a moved row
on the target commits after the transaction holding the target's 'own' marker (the range
is fenced until that commit), so it gets an epoch >= the move's epoch E; every change of
the row on the source committed before the fence, where the source's epoch is < E (moves
run one at a time, each with a higher epoch). Within one shard the epoch never decreases
along the WAL, so the shard's own order is kept.

The markers come from the shard's `sharding_move_marker` table when a stream starts (a
restart stamps as the first pass did) and from the stream itself as they commit. Only a
transaction committed between an 'own' marker's insert and its commit can be stamped
differently by the two (see docs/ARCHITECTURE.md, "Bucket moves"); it cannot touch the
moved range, and either stamp keeps the shard's order.
"""

from __future__ import annotations

import bisect
from typing import Any

import psycopg

from apps.audit.pgoutput import str_to_lsn

MARKER_TABLE = "sharding_move_marker"
EPOCH_SHIFT = 96
LSN_SHIFT = 32


def row_version(stream_epoch: int, commit_lsn: int, seq: int) -> int:
    """The typed tables' ReplacingMergeTree version (UInt128)."""
    return (stream_epoch << EPOCH_SHIFT) | (commit_lsn << LSN_SHIFT) | seq


def as_lsn(value: Any) -> int:
    """A pg_lsn as an integer, whether it came decoded (int) or as PostgreSQL's text."""
    return value if isinstance(value, int) else str_to_lsn(str(value))


class StreamEpochs:
    """One shard's 'own' markers, answering `at(commit_lsn)`."""

    def __init__(self) -> None:
        self._markers: dict[int, tuple[int, int]] = {}  # marker id -> (wal_lsn, epoch)
        self._lsns: list[int] = []  # wal_lsn, ascending
        self._epochs: list[int] = []  # highest epoch up to and including the same index

    def __len__(self) -> int:
        return len(self._markers)

    def add(self, marker: dict[str, Any]) -> bool:
        """Take a `sharding_move_marker` row; True if it is an 'own' marker not known before."""
        if marker.get("kind") != "own" or marker["id"] in self._markers:
            return False
        self._markers[marker["id"]] = (as_lsn(marker["wal_lsn"]), int(marker["epoch"]))
        ordered = sorted(self._markers.values())
        self._lsns = [lsn for lsn, _ in ordered]
        self._epochs = []
        highest = 0
        for _, epoch in ordered:
            highest = max(highest, epoch)
            self._epochs.append(highest)
        return True

    def at(self, commit_lsn: int) -> int:
        """The shard's stream epoch for a transaction committed at `commit_lsn`."""
        index = bisect.bisect_left(self._lsns, commit_lsn)  # markers with wal_lsn < commit_lsn
        return self._epochs[index - 1] if index else 0

    def load(self, conn: psycopg.Connection[Any]) -> None:
        """Add the markers of the shard's table, as `conn` sees it."""
        rows = conn.execute(
            f"SELECT id, kind, wal_lsn::text, epoch FROM {MARKER_TABLE} WHERE kind = 'own'"  # noqa: S608
        ).fetchall()
        for marker_id, kind, wal_lsn, epoch in rows:
            self.add({"id": marker_id, "kind": kind, "wal_lsn": wal_lsn, "epoch": epoch})


def served_at(conn: psycopg.Connection[Any], shard: str, lsn: int) -> list[int]:
    """The buckets `shard` served at WAL position `lsn`: those it owns now, with the moves
    its journal recorded after `lsn` undone, latest first (an 'own' gave it a range, a
    'fence' took one away, an 'unfence' gave a fenced one back). Read in one snapshot."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        served = {b for (b,) in conn.execute("SELECT bucket FROM sharding_bucket_owner WHERE state = 'owned'")}
        later = conn.execute(
            f"SELECT kind, first_bucket, last_bucket, source, target FROM {MARKER_TABLE}"  # noqa: S608
            " WHERE wal_lsn > %s::pg_lsn ORDER BY wal_lsn DESC, id DESC",
            [f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"],
        ).fetchall()
    for kind, first, last, source, target in later:
        moved = set(range(first, last + 1))
        if (kind == "own" and target == shard) or (kind == "unfence" and source == shard):
            served -= moved
        elif kind == "fence" and source == shard:
            served |= moved
    return sorted(served)
