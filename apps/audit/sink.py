"""Writes captured transactions into the audit store, idempotently.

Every change carries `(shard, commit_lsn, seq)`: its transaction's commit position in
the shard's WAL and its place in the transaction. The raw change log is keyed on exactly
that, the typed tables on each row's natural key with
`version = (stream_epoch << 96) | (commit_lsn << 32) | seq` (apps.audit.epochs: the epoch
keeps versions comparable when a row's bucket has moved to another shard), all
ReplacingMergeTree: writing a transaction twice (the reader crashed after the insert and
before confirming its position) leaves the deduplicated (FINAL) view unchanged.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from apps.audit.epochs import as_lsn, row_version

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Change:
    """One row change (or a snapshot row) at its position in the shard's WAL."""

    table: str
    op: str  # insert | update | delete | truncate | snapshot
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    seq: int
    values: list[Any] | None = None  # the typed table's columns, when the reader projected them already


@dataclass
class Transaction:
    """A committed transaction of one shard, as the reader buffered it."""

    shard: str
    xid: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime
    changes: list[Change] = field(default_factory=list)
    stream_epoch: int = 0  # the shard's stream epoch at this commit (apps.audit.epochs)
    confirm_lsn: int = 0  # the position confirmed (and recorded) once the transaction is written
    heartbeat_at: float | None = None  # an (empty) heartbeat: when it was emitted, epoch seconds


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # a string: no reader can turn it into a float by accident
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot put {type(value).__name__} in an audit row")


# orjson writes UUIDs and datetimes itself (RFC 3339) and integers exactly; it is several
# times faster than the standard library, which matters: this is the sink's hot path.
_JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def row_json(row: dict[str, Any] | None) -> str | None:
    if row is None:
        return None
    return orjson.dumps(row, default=_json_default, option=_JSON_OPTIONS).decode()


# What the typed tables' DateTime64 columns can hold.
_FIRST_YEAR, _LAST_YEAR = 1900, 2299


def _ts(value: Any) -> datetime:
    """A timestamp for a typed column. A missing one (a key-only delete) is the epoch; one the
    store cannot hold ('infinity', year 9999) is refused here, where the reader can say which
    change it is, rather than failing the whole batch's insert over and over."""
    if value is None:
        return EPOCH
    if not isinstance(value, datetime) or not _FIRST_YEAR <= value.year <= _LAST_YEAR:
        raise ValueError(f"timestamp {value!r} is outside what the audit store can hold")
    return value


@dataclass(frozen=True)
class TypedTable:
    """How rows of one replicated PostgreSQL table land in their typed audit table."""

    source: str
    target: str
    columns: tuple[str, ...]  # the typed table's own columns, in order
    project: Callable[[dict[str, Any]], list[Any]]
    defaults: dict[str, Any] = field(default_factory=dict)
    bucket_column: str | None = None  # the typed column whose id carries the row's bucket

    def values(self, op: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[Any] | None:
        """The typed columns of a change (raises on a value the store cannot hold)."""
        data = old if op == "delete" else new
        if data is None:
            return None
        # A delete under the default replica identity only carries the key: fill the rest.
        return self.project({**self.defaults, **data})

    def row(self, shard: str, tx: Transaction, change: Change) -> list[Any] | None:
        values = change.values
        if values is None:
            values = self.values(change.op, change.old, change.new)
            if values is None:
                return None
        version = row_version(tx.stream_epoch, tx.commit_lsn, change.seq)
        deleted = int(change.op == "delete")
        return [shard, *values, tx.commit_lsn, change.seq, tx.commit_time, version, deleted]

    @property
    def column_names(self) -> list[str]:
        return ["shard", *self.columns, "commit_lsn", "seq", "commit_time", "version", "is_deleted"]


_NIL = uuid.UUID(int=0)

TYPED_TABLES: dict[str, TypedTable] = {
    t.source: t
    for t in (
        TypedTable(
            "ledger_entry",
            "audit.ledger_entries",
            ("entry_id", "wallet_id", "entry_seq", "reference", "kind", "amount_minor", "balance_after_minor",
             "created_at"),
            lambda r: [r["id"], r["wallet_id"], r["seq"], r["reference"], r["kind"], r["amount_minor"],
                       r["balance_after_minor"], _ts(r["created_at"])],
            {"wallet_id": _NIL, "seq": 0, "reference": "", "kind": "", "amount_minor": 0, "balance_after_minor": 0,
             "created_at": None},
            "wallet_id",
        ),
        TypedTable(
            "ledger_wallet",
            "audit.wallets",
            ("wallet_id", "owner_id", "currency", "balance_minor", "status", "last_entry_seq", "created_at",
             "updated_at", "description", "metadata"),
            lambda r: [r["id"], r["owner_id"], r["currency"], r["balance_minor"], r["status"], r["last_entry_seq"],
                       _ts(r["created_at"]), _ts(r["updated_at"]), r["description"], r["metadata"]],
            {"owner_id": 0, "currency": "", "balance_minor": 0, "status": "", "last_entry_seq": 0,
             "created_at": None, "updated_at": None, "description": None, "metadata": None},
            "wallet_id",
        ),
        TypedTable(
            "transfers_transfer",
            "audit.transfers",
            ("transfer_id", "client_id", "payer_id", "payee_id", "amount_minor", "currency", "status",
             "failure_reason", "attempts", "parked_at", "created_at", "updated_at", "refund_of", "amount_refunded",
             "description", "metadata"),
            lambda r: [r["id"], r["client_id"], r["payer_id"], r["payee_id"], r["amount_minor"], r["currency"],
                       r["status"], r["failure_reason"], r["attempts"], r["parked_at"], _ts(r["created_at"]),
                       _ts(r["updated_at"]), r["refund_of"], r["amount_refunded"], r["description"], r["metadata"]],
            {"client_id": 0, "payer_id": _NIL, "payee_id": _NIL, "amount_minor": 0, "currency": "", "status": "",
             "failure_reason": None, "attempts": 0, "parked_at": None, "created_at": None, "updated_at": None,
             "refund_of": None, "amount_refunded": 0, "description": None, "metadata": None},
            "transfer_id",
        ),
        TypedTable(
            "transfers_event",
            "audit.transfer_transitions",
            ("transfer_id", "event_id", "from_status", "to_status", "reason", "created_at"),
            lambda r: [r["transfer_id"], r["id"], r["from_status"], r["to_status"], r["reason"],
                       _ts(r["created_at"])],
            {"transfer_id": _NIL, "from_status": None, "to_status": "", "reason": None, "created_at": None},
            "transfer_id",
        ),
        TypedTable(
            "transfers_payee_credit",
            "audit.payee_credits",
            ("transfer_id", "payee_id", "amount_minor", "outcome", "reason", "created_at"),
            lambda r: [r["transfer_id"], r["payee_id"], r["amount_minor"], r["outcome"], r["reason"],
                       _ts(r["created_at"])],
            {"payee_id": _NIL, "amount_minor": 0, "outcome": "", "reason": None, "created_at": None},
            "payee_id",
        ),
        TypedTable(
            "sharding_move_marker",
            "audit.move_journal",
            ("marker_id", "move_id", "kind", "first_bucket", "last_bucket", "source", "target", "epoch", "wal_lsn",
             "created_at"),
            lambda r: [r["id"], r["move_id"], r["kind"], r["first_bucket"], r["last_bucket"], r["source"],
                       r["target"], r["epoch"], as_lsn(r["wal_lsn"]), _ts(r["created_at"])],
            {"move_id": 0, "kind": "", "first_bucket": 0, "last_bucket": 0, "source": "", "target": "", "epoch": 0,
             "wal_lsn": 0, "created_at": None},
        ),
    )
}  # fmt: skip

POSITION_COLUMNS = [
    "shard", "slot_name", "confirmed_lsn", "stream_epoch", "tables", "timeline", "generation", "version", "updated_at",
]  # fmt: skip
POSITIONS_TABLE = "audit.stream_positions"


@dataclass(frozen=True)
class StorePosition:
    """Everything `shard` wrote before `confirmed_lsn` (in the captured `tables`) is in the store."""

    shard: str
    slot_name: str
    confirmed_lsn: int
    stream_epoch: int
    tables: tuple[str, ...]
    timeline: int = 0  # the shard's timeline when recorded (0: not known)
    generation: int = 0  # the store's snapshots of the shard before this one's slot

    @property
    def version(self) -> int:
        """What orders a shard's positions: never the wall clock, which can step back."""
        return (self.generation << 64) | self.confirmed_lsn

    def row(self) -> list[Any]:
        return [self.shard, self.slot_name, self.confirmed_lsn, self.stream_epoch, list(self.tables), self.timeline,
                self.generation, self.version, datetime.now(tz=UTC)]  # fmt: skip


CHANGE_COLUMNS = ["shard", "commit_lsn", "seq", "xid", "commit_time", "table_name", "op", "old_row", "new_row"]


class AuditSink:
    """Turns transactions into rows and inserts them; returns only once the store has them.

    Shared by the per-shard reader threads: one lock keeps each batch's inserts together
    (chDB is one engine per process; a server does not mind either way).
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.lock = threading.Lock()  # also taken by apps.audit.stream_state

    def rows_for(self, transactions: Iterable[Transaction]) -> dict[str, tuple[list[str], list[list[Any]]]]:
        changes: list[list[Any]] = []
        typed: dict[str, list[list[Any]]] = {}
        for tx in transactions:
            for change in tx.changes:
                changes.append([
                    tx.shard, tx.commit_lsn, change.seq, tx.xid, tx.commit_time, change.table, change.op,
                    row_json(change.old), row_json(change.new),
                ])  # fmt: skip
                table = TYPED_TABLES.get(change.table)
                if table is not None and change.op != "truncate":
                    row = table.row(tx.shard, tx, change)
                    if row is not None:
                        typed.setdefault(table.source, []).append(row)
        out = {TYPED_TABLES[source].target: (TYPED_TABLES[source].column_names, rows) for source, rows in typed.items()}
        if changes:
            out["audit.changes"] = (CHANGE_COLUMNS, changes)
        return out

    def write(self, transactions: list[Transaction]) -> int:
        """Insert the transactions' changes; return how many changes were written."""
        tables = self.rows_for(transactions)
        with self.lock:
            for table, (columns, rows) in tables.items():
                self.client.insert(table, rows, column_names=columns)
        return len(tables.get("audit.changes", ((), []))[1])

    def record_position(self, position: StorePosition) -> None:
        with self.lock:
            self.client.insert(POSITIONS_TABLE, [position.row()], column_names=POSITION_COLUMNS)

    def position(self, shard: str) -> StorePosition | None:
        """Up to where this store holds the shard's changes; None if it never completed a snapshot of it."""
        with self.lock:
            rows = self.client.query(
                "SELECT shard, slot_name, confirmed_lsn, stream_epoch, tables, timeline, generation"
                " FROM audit.stream_positions FINAL WHERE shard = {shard:String}",
                parameters={"shard": shard},
            ).result_rows
        if not rows:
            return None
        shard, slot_name, lsn, epoch, tables, timeline, generation = rows[0]
        return StorePosition(shard, slot_name, int(lsn), int(epoch), tuple(tables), int(timeline), int(generation))

    def snapshot_complete(self, shard: str, slot_name: str) -> bool:
        """Whether this store holds the complete initial snapshot of `slot_name` on `shard`."""
        with self.lock:
            rows = self.client.query(
                "SELECT completed FROM audit.cdc_snapshots FINAL"
                " WHERE shard = {shard:String} AND slot_name = {slot:String}",
                parameters={"shard": shard, "slot": slot_name},
            ).result_rows
        return bool(rows and rows[0][0])

    def snapshot_point(self, shard: str, slot_name: str) -> int | None:
        """The consistent point of this store's complete snapshot of `slot_name` on `shard`, if any."""
        with self.lock:
            rows = self.client.query(
                "SELECT consistent_lsn FROM audit.cdc_snapshots FINAL"
                " WHERE shard = {shard:String} AND slot_name = {slot:String} AND completed = 1",
                parameters={"shard": shard, "slot": slot_name},
            ).result_rows
        return int(rows[0][0]) if rows else None

    def record_snapshot(self, shard: str, slot_name: str, consistent_lsn: int, rows: int, *, completed: bool) -> None:
        """Mark a snapshot as started (before the copy) or completed (after it)."""
        with self.lock:
            self.client.insert(
                "audit.cdc_snapshots",
                [[shard, slot_name, consistent_lsn, rows, int(completed), datetime.now(tz=UTC)]],
                column_names=["shard", "slot_name", "consistent_lsn", "rows", "completed", "completed_at"],
            )
