"""What the audit store knows about its own streams: its identity, the slots it owns, the
gaps it knows it has, and the deletions it writes for rows a re-snapshot or a TRUNCATE
showed to be gone.

A slot is tied to its store twice: the store's id is in the slot's name, and the shard
records which store created the slot (`shardwallet_cdc_slot`, made by the shards' migrations,
apps/ledger/migrations/0015), so a second store (a staging copy, a reader started by mistake)
refuses a slot instead of consuming changes the first one then never sees.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from apps.audit.epochs import row_version
from apps.audit.sink import TYPED_TABLES, AuditSink


def store_id(sink: AuditSink) -> uuid.UUID:
    """The store's id, made the first time the store is opened (the oldest row wins)."""
    with sink.lock:
        rows = sink.client.query("SELECT store_id FROM audit.store_identity ORDER BY created_at LIMIT 1").result_rows
        if rows:
            return uuid.UUID(str(rows[0][0]))
        made = uuid.uuid4()
        sink.client.insert(
            "audit.store_identity", [[made, datetime.now(tz=UTC)]], column_names=["store_id", "created_at"]
        )
    return store_id(sink)


def slot_name(prefix: str, store: uuid.UUID) -> str:
    """The slot a store reads on every shard: `<prefix>_<first 12 hex digits of its id>`."""
    return f"{prefix}_{store.hex[:12]}"


def register_slot(conn: psycopg.Connection[Any], slot: str, store: uuid.UUID) -> None:
    """Record on the shard that `store` owns `slot` (before the slot is created)."""
    conn.execute(
        "INSERT INTO shardwallet_cdc_slot (slot_name, store_id) VALUES (%s, %s)"
        " ON CONFLICT (slot_name) DO UPDATE SET store_id = EXCLUDED.store_id, created_at = now(),"
        " heartbeat_lsns = '{}', released_lsn = NULL",
        [slot, store],
    )


def slot_owner(conn: psycopg.Connection[Any], slot: str) -> tuple[uuid.UUID | None, list[int]]:
    """The store the shard says created `slot` (None if it never recorded one), and the
    positions of the last heartbeats written for it."""
    row = conn.execute(
        "SELECT store_id, ARRAY(SELECT pg_wal_lsn_diff(h, '0/0')::bigint FROM unnest(heartbeat_lsns) h)"
        " FROM shardwallet_cdc_slot WHERE slot_name = %s",
        [slot],
    ).fetchone()
    return (row[0], [int(lsn) for lsn in row[1]]) if row else (None, [])


def slot_released_at(conn: psycopg.Connection[Any], slot: str) -> int | None:
    """Where `slot` was when its reader last let go of it; None while one reads it, or if
    that reader was killed (or the slot was made before this was recorded)."""
    row = conn.execute(
        "SELECT pg_wal_lsn_diff(released_lsn, '0/0')::bigint FROM shardwallet_cdc_slot WHERE slot_name = %s", [slot]
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def record_slot_release(conn: psycopg.Connection[Any], slot: str, released: int | None) -> None:
    """Note where the reader left `slot` (None: a reader holds it now)."""
    lsn = None if released is None else f"{released >> 32:X}/{released & 0xFFFFFFFF:X}"
    conn.execute("UPDATE shardwallet_cdc_slot SET released_lsn = %s::pg_lsn WHERE slot_name = %s", [lsn, slot])


@dataclass(frozen=True)
class Gap:
    """A range of one shard's WAL whose changes the store does not hold."""

    shard: str
    from_lsn: int
    to_lsn: int
    cause: str  # slot_missing | slot_lost | slot_ahead | slot_moved | slot_behind | undecodable
    resolution: str  # resnapshot | skip
    detail: str
    requested_by: str


GAP_COLUMNS = ["shard", "from_lsn", "to_lsn", "cause", "resolution", "detail", "requested_by", "recorded_at"]


def record_gap(sink: AuditSink, gap: Gap) -> None:
    row = [gap.shard, gap.from_lsn, gap.to_lsn, gap.cause, gap.resolution, gap.detail, gap.requested_by,
           datetime.now(tz=UTC)]  # fmt: skip
    with sink.lock:
        sink.client.insert("audit.cdc_gaps", [row], column_names=GAP_COLUMNS)


def recorded_gaps(sink: AuditSink, shard: str) -> list[dict[str, Any]]:
    with sink.lock:
        result = sink.client.query(
            "SELECT from_lsn, to_lsn, cause, resolution, detail, requested_by, recorded_at"
            " FROM audit.cdc_gaps FINAL WHERE shard = {shard:String} ORDER BY from_lsn",
            parameters={"shard": shard},
        )
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _hex_buckets(buckets: list[int]) -> str:
    """ClickHouse literal: the buckets as the 3 hex digits `toString(uuid)` shows them."""
    return "[" + ", ".join(f"'{b:03x}'" for b in sorted(buckets)) + "]"


def write_deletions(
    sink: AuditSink,
    *,
    shard: str,
    source_tables: list[str],
    buckets: list[int],
    version: int,
    commit_lsn: int,
    commit_time: datetime,
    keep_commit_lsn: int | None = None,
) -> None:
    """Mark deleted, at `version`, every live row of `source_tables` in `buckets` whose latest
    version is older than `version`, except (with `keep_commit_lsn`) the rows this shard's
    stream wrote at that position (a re-snapshot's rows: everything it did not copy is gone).

    Done inside the store (INSERT ... SELECT), so memory does not grow with the table.
    """
    if not buckets:
        return
    shard_literal = "'" + shard.replace("\\", "\\\\").replace("'", "\\'") + "'"
    when = commit_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    for source in source_tables:
        table = TYPED_TABLES.get(source)
        if table is None or table.bucket_column is None:
            continue
        columns = ", ".join(table.columns)
        keep = ""
        if keep_commit_lsn is not None:
            keep = f" AND NOT (shard = {shard_literal} AND commit_lsn = {int(keep_commit_lsn)})"
        statement = (
            f"INSERT INTO {table.target} ({', '.join(table.column_names)})"  # noqa: S608 (literals built above)
            f" SELECT {shard_literal}, {columns}, {int(commit_lsn)}, 0, toDateTime64('{when}', 6, 'UTC'),"
            f" toUInt128('{int(version)}'), 1"
            f" FROM {table.target} FINAL"
            f" WHERE is_deleted = 0 AND version < toUInt128('{int(version)}')"
            f" AND has({_hex_buckets(buckets)}, substring(toString({table.bucket_column}), 16, 3)){keep}"
        )
        with sink.lock:
            sink.client.command(statement)


def deletion_version(stream_epoch: int, commit_lsn: int) -> int:
    """The version of deletions written for a position: above every older change of the rows."""
    return row_version(stream_epoch, commit_lsn, 0)


# Where the store keeps one shard's changes at a WAL position (the typed tables carry the
# stream that wrote each row and its commit position).
_POSITIONED_TABLES = ("audit.changes", *(table.target for table in TYPED_TABLES.values()))


def abandon_history(sink: AuditSink, *, shard: str, branch_lsn: int, generation: int, timeline: int) -> int:
    """The shard is on a history that left the one this store followed at `branch_lsn`, below
    the store's position: move the store's changes of the shard from that point on into
    audit.abandoned_changes and out of the store's view of the shard (audit.changes, the
    typed tables), so that the older versions of those rows are current again until the new
    history's changes, at positions that may repeat the abandoned ones', replace them.
    Returns how many changes were abandoned.

    Run again after a crash half-way, it copies what is still there (the copies collapse)
    and deletes again; a re-snapshot's own rows (op 'snapshot') are never copied."""
    params = {"shard": shard, "branch": branch_lsn}
    past = "shard = {shard:String} AND commit_lsn >= {branch:UInt64}"
    with sink.lock:
        sink.client.command(
            "INSERT INTO audit.abandoned_changes SELECT shard, {generation:UInt32}, {timeline:UInt32},"  # noqa: S608
            " {branch:UInt64}, commit_lsn, seq, xid, commit_time, table_name, op, old_row, new_row, now64(6)"
            f" FROM audit.changes FINAL WHERE {past} AND op != 'snapshot'",
            parameters={**params, "generation": generation, "timeline": timeline},
        )
        abandoned = int(
            sink.client.query(
                "SELECT count() FROM audit.abandoned_changes FINAL"
                " WHERE shard = {shard:String} AND generation = {generation:UInt32}",
                parameters={"shard": shard, "generation": generation},
            ).result_rows[0][0]
        )
        # transfer_entries is fed from ledger_entries and has no position of its own.
        sink.client.command(
            "DELETE FROM audit.transfer_entries WHERE (entry_id, version) IN"  # noqa: S608
            f" (SELECT entry_id, version FROM audit.ledger_entries WHERE {past})",
            parameters=params,
        )
        for table in _POSITIONED_TABLES:
            sink.client.command(f"DELETE FROM {table} WHERE {past}", parameters=params)  # noqa: S608
    return abandoned
