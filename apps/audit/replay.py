"""Apply again, on a shard restored to an earlier point, the changes its new history lost.

`cdc_resnapshot` keeps the store's changes of a shard past the point where the shard's history
left the one the store followed in `audit.abandoned_changes` (apps/audit/stream_state.py,
`abandon_history`). Each was a committed transaction of the shard, captured with the whole
row before and after (REPLICA IDENTITY FULL): applying them in commit order, one transaction
for each, brings the shard's rows back to where the store had them, with the same ids,
sequences, balances and statuses, so the other shards' halves of cross-shard transfers find
theirs again.

How each change is applied, so that a repeat is a no-op and nothing newer is overwritten:
- an insert: done if the row is absent; nothing if the same row is there; else a conflict;
- an update: nothing if the row already is the new one; done if it is the old one; else a conflict;
- a delete: nothing if the row is gone; done if it is the old one; else a conflict.
A conflict (the shard changed the row since its restore) stops the replay before that
transaction, which is rolled back: an operator decides. Triggers do not fire (the session is a
replica's, as PostgreSQL's own apply worker's is): the rows they made (events, refunds' settling)
are among the changes. Serial ids then continue past the replayed ones.

Refused: changes of the move journal (a move involving the shard after the restore point: its
ranges must be put right by hand first) and rows of buckets the map does not give the shard.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Any

from django.db import DatabaseError, IntegrityError, connections, transaction
from psycopg import sql

from apps.audit.epochs import MARKER_TABLE
from apps.sharding.ids import bucket_of
from apps.sharding.placement import BUCKET_COLUMNS
from apps.sharding.routing import shard_map

PAGE_ROWS = 20_000


class ReplayRefused(Exception):
    """The changes cannot be applied as they are; nothing was changed."""


class ReplayConflict(Exception):
    """A row differs from what the change expects; the transactions before it were applied."""


@dataclass(frozen=True)
class AbandonedChange:
    commit_lsn: int
    seq: int
    xid: int
    commit_time: datetime
    table: str
    op: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None


@dataclass
class ReplayReport:
    shard: str
    generation: int
    transactions: int = 0
    applied: Counter[str] = field(default_factory=Counter)  # table -> rows written
    already: Counter[str] = field(default_factory=Counter)  # table -> rows that were already so
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would apply" if self.dry_run else "applied"
        applied = ", ".join(f"{table} {n}" for table, n in sorted(self.applied.items())) or "nothing"
        already = sum(self.already.values())
        return (
            f"{self.shard}: {self.transactions} transactions of generation {self.generation}; {verb}: {applied};"
            f" {already} rows were already so"
        )


def latest_generation(client: Any, shard: str) -> int | None:
    rows = client.query(
        "SELECT max(generation), count() FROM audit.abandoned_changes WHERE shard = {shard:String}",
        parameters={"shard": shard},
    ).result_rows
    return int(rows[0][0]) if rows and rows[0][1] else None


def abandoned_changes(client: Any, shard: str, generation: int) -> Iterator[AbandonedChange]:
    """The shard's abandoned changes of that generation, in commit order, read a page at a time."""
    after = (-1, -1)
    while True:
        rows = client.query(
            "SELECT commit_lsn, seq, xid, commit_time, table_name, op, old_row, new_row"
            " FROM audit.abandoned_changes FINAL WHERE shard = {shard:String} AND generation = {generation:UInt32}"
            " AND (commit_lsn, seq) > ({lsn:Int64}, {seq:Int64}) ORDER BY commit_lsn, seq LIMIT {limit:UInt32}",
            parameters={"shard": shard, "generation": generation, "lsn": after[0], "seq": after[1], "limit": PAGE_ROWS},
        ).result_rows
        for lsn, seq, xid, when, table, op, old, new in rows:
            yield AbandonedChange(
                int(lsn), int(seq), int(xid), when, str(table), str(op),
                json.loads(old) if old is not None else None, json.loads(new) if new is not None else None,
            )  # fmt: skip
        if len(rows) < PAGE_ROWS:
            return
        after = (int(rows[-1][0]), int(rows[-1][1]))


def check_replayable(shard: str, changes: list[AbandonedChange]) -> None:
    """Refuse, before anything is written, what the replay must not apply."""
    moves = sorted({(c.new or c.old or {}).get("kind", "?") for c in changes if c.table == MARKER_TABLE})
    if moves:
        raise ReplayRefused(
            f"{shard}'s lost changes include move markers ({', '.join(moves)}): a move involved it after the restore"
            " point, and its ranges must be put right by hand first (docs/DEPLOY.md, restoring a shard)"
        )
    unknown = sorted({c.table for c in changes if c.table not in BUCKET_COLUMNS})
    if unknown:
        raise ReplayRefused(f"no replay for rows of {', '.join(unknown)} (not a sharded table)")
    truncates = [c for c in changes if c.op == "truncate"]
    if truncates:
        raise ReplayRefused(f"a TRUNCATE of {truncates[0].table} is among {shard}'s lost changes: replay it by hand")
    current = shard_map()
    elsewhere = sorted({owner for c in changes if (owner := current.alias_for_bucket(_bucket(c))) != shard})
    if elsewhere:
        raise ReplayRefused(
            f"rows of buckets the map now gives to {', '.join(elsewhere)}, not to {shard} (moved since): replay refused"
        )


def _bucket(change: AbandonedChange) -> int:
    return bucket_of(uuid.UUID(str(_row(change)[BUCKET_COLUMNS[change.table]])))


def _row(change: AbandonedChange) -> dict[str, Any]:
    row = change.new if change.op != "delete" else change.old
    if row is None:
        raise ReplayRefused(f"a {change.op} of {change.table} at {change.commit_lsn} carries no row")
    return row


@dataclass(frozen=True)
class _Table:
    name: str
    key: str
    types: dict[str, str]  # column -> type, as format_type prints it
    serials: tuple[tuple[str, str], ...]  # (column, its sequence) of serial columns

    def record(self, row: dict[str, Any]) -> str:
        """The row as jsonb_populate_record reads it: the audit store keeps jsonb as its text,
        a pg_lsn as an integer and bytea as hex."""
        out: dict[str, Any] = {}
        for column, value in row.items():
            kind = self.types.get(column)
            if value is not None and kind in ("jsonb", "json") and isinstance(value, str):
                value = json.loads(value)
            elif value is not None and kind == "pg_lsn" and isinstance(value, int):
                value = f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
            elif value is not None and kind == "bytea" and isinstance(value, str):
                value = "\\x" + value
            out[column] = value
        return json.dumps(out)


def _describe(cursor: Any, table: str) -> _Table:
    cursor.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), pg_get_serial_sequence(%s, a.attname),"
        " coalesce(i.indisprimary, false)"
        " FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary"
        "  AND a.attnum = ANY(i.indkey)"
        " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
        [table, table],
    )
    rows = cursor.fetchall()
    keys = [name for name, _type, _seq, primary in rows if primary]
    if len(keys) != 1:
        raise ReplayRefused(f"{table} has no one-column primary key")
    return _Table(
        table, keys[0], {name: kind for name, kind, _seq, _p in rows}, tuple((n, s) for n, _k, s, _p in rows if s)
    )


# Columns a shard sets itself when a row is copied in (replica triggers, which fire for the
# replay as for a move's apply worker): not compared when telling whether a row is replayed.
SET_ON_COPY: dict[str, list[str]] = {"events_event": ["txid"]}  # apps/events/outbox_sql.py, events_copied


def _state(cursor: Any, table: _Table, row: str, old: str | None, ahead: list[str]) -> tuple[bool, bool, bool]:
    """Whether the row with `row`'s key exists, equals `old`, and equals one of the images `ahead`
    (the row as this change or a later one of the replay leaves it: already applied)."""
    query = sql.SQL(
        "SELECT to_jsonb(t) - %(skip)s::text[] = to_jsonb(jsonb_populate_record(NULL::{t}, %(old)s::jsonb))"
        " - %(skip)s::text[],"
        " coalesce((SELECT bool_or(to_jsonb(t) - %(skip)s::text[] ="
        "  to_jsonb(jsonb_populate_record(NULL::{t}, image)) - %(skip)s::text[])"
        "  FROM unnest(%(ahead)s::jsonb[]) image), false)"
        " FROM {t} t WHERE t.{k} = (jsonb_populate_record(NULL::{t}, %(row)s::jsonb)).{k}"
    ).format(t=sql.Identifier(table.name), k=sql.Identifier(table.key))
    params = {"skip": SET_ON_COPY.get(table.name, []), "old": old or row, "ahead": ahead, "row": row}
    cursor.execute(query.as_string(cursor.connection), params)
    found = cursor.fetchone()
    return (False, False, False) if found is None else (True, bool(found[0]) and old is not None, bool(found[1]))


def _apply(cursor: Any, table: _Table, change: AbandonedChange, ahead: list[str]) -> bool:
    """Apply one change; True if it wrote, False if the row already was so (raises on a conflict)."""
    t, k = sql.Identifier(table.name), sql.Identifier(table.key)
    row = table.record(_row(change))  # the new row; a delete's old one
    key = str(_row(change)[table.key])
    old = table.record(change.old) if change.op != "insert" and change.old is not None else None
    exists, is_old, applied = _state(cursor, table, row, old, ahead)
    where = f"conflict at {change.table} row {key}, changed at {change.commit_lsn:X}"
    if change.op == "insert":
        if exists:
            if applied:
                return False
            raise ReplayConflict(
                f"{where}: inserted then, but a different row has its key now{_diff(cursor, table, row)}"
            )
        statement = sql.SQL("INSERT INTO {t} SELECT * FROM jsonb_populate_record(NULL::{t}, %s::jsonb)").format(t=t)
        try:
            cursor.execute(statement.as_string(cursor.connection), [row])
        except IntegrityError as exc:
            raise ReplayConflict(
                f"{where}: inserted then, but it clashes with a row the shard has now ({exc})"
            ) from exc
        return True
    if change.op == "update":
        if exists and applied:
            return False
        if not exists or (old is not None and not is_old):
            state = "gone" if not exists else f"different{_diff(cursor, table, old or row)}"
            raise ReplayConflict(f"{where}: updated then, but the row is {state} now")
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.types)
        statement = sql.SQL(
            "UPDATE {t} SET ({c}) = (SELECT {rc} FROM jsonb_populate_record(NULL::{t}, %s::jsonb) r)"
            " WHERE {k} = (jsonb_populate_record(NULL::{t}, %s::jsonb)).{k}"
        ).format(t=t, c=columns, rc=sql.SQL(", ").join(sql.SQL("r.") + sql.Identifier(c) for c in table.types), k=k)
        cursor.execute(statement.as_string(cursor.connection), [row, row])
        return True
    if not exists or applied:
        return False
    if not is_old:
        raise ReplayConflict(f"{where}: deleted then, but the row is different now{_diff(cursor, table, row)}")
    delete = sql.SQL("DELETE FROM {t} WHERE {k} = (jsonb_populate_record(NULL::{t}, %s::jsonb)).{k}")
    cursor.execute(delete.format(t=t, k=k).as_string(cursor.connection), [row])
    return True


def _diff(cursor: Any, table: _Table, expected: str) -> str:
    """The columns in which the shard's row differs from `expected`, for the operator."""
    query = sql.SQL(
        "SELECT coalesce(string_agg(c.key || ' is ' || c.value::text || ', not ' || coalesce(e.value::text, 'absent'),"
        " '; '), '') FROM {t} t, jsonb_each(to_jsonb(t)) c"
        " LEFT JOIN jsonb_each(to_jsonb(jsonb_populate_record(NULL::{t}, %s::jsonb))) e ON e.key = c.key"
        " WHERE t.{k} = (jsonb_populate_record(NULL::{t}, %s::jsonb)).{k} AND c.value IS DISTINCT FROM e.value"
    ).format(t=sql.Identifier(table.name), k=sql.Identifier(table.key))
    cursor.execute(query.as_string(cursor.connection), [expected, expected])
    found = cursor.fetchone()
    return f" ({found[0]})" if found and found[0] else ""


def _images_ahead(tables: dict[str, _Table], changes: list[AbandonedChange]) -> list[list[str]]:
    """For each change, the images its row takes from that change on (what a row already
    replayed that far looks like), so that a repeat after a crash half-way is a no-op."""
    images: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for index, change in enumerate(changes):
        if change.op != "delete" and change.new is not None:
            table = tables[change.table]
            images.setdefault((change.table, str(change.new[table.key])), []).append((index, table.record(change.new)))
    ahead = []
    for index, change in enumerate(changes):
        key = (change.table, str(_row(change)[tables[change.table].key]))
        ahead.append([image for at, image in images.get(key, []) if at >= index])
    return ahead


class _DryRun(Exception):
    pass


def replay(shard: str, generation: int, changes: list[AbandonedChange], *, dry_run: bool = False) -> ReplayReport:
    """Apply `changes` on `shard`, a transaction of the shard's lost history per transaction here."""
    check_replayable(shard, changes)
    report = ReplayReport(shard, generation, dry_run=dry_run)
    tables: dict[str, _Table] = {}
    with connections[shard].cursor() as cursor:
        for name in sorted({c.table for c in changes}):
            tables[name] = _describe(cursor, name)
    ahead = _images_ahead(tables, changes)
    try:
        for _lsn, group in groupby(range(len(changes)), key=lambda i: changes[i].commit_lsn):
            indexes = list(group)
            writes, already = _replay_transaction(
                shard, tables, [(changes[i], ahead[i]) for i in indexes], dry_run=dry_run
            )
            report.transactions += 1
            report.applied.update(writes)
            report.already.update(already)
    except ReplayConflict as exc:
        raise ReplayConflict(f"{exc} (stopped there: {report.summary()})") from exc
    finally:
        if not dry_run:
            _continue_sequences(shard, [t for t in tables.values() if report.applied[t.name]])
    return report


def _replay_transaction(
    shard: str, tables: dict[str, _Table], changes: list[tuple[AbandonedChange, list[str]]], *, dry_run: bool
) -> tuple[Counter[str], Counter[str]]:
    """One lost transaction, in one transaction of the shard: rows written and rows already so, by table."""
    writes: Counter[str] = Counter()
    already: Counter[str] = Counter()
    try:
        with transaction.atomic(using=shard), connections[shard].cursor() as cursor:
            _replica_session(cursor, shard)
            for change, ahead in changes:
                (writes if _apply(cursor, tables[change.table], change, ahead) else already)[change.table] += 1
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return writes, already


def _replica_session(cursor: Any, shard: str) -> None:
    try:
        cursor.execute("SET LOCAL session_replication_role = replica")
    except DatabaseError as exc:
        raise ReplayRefused(
            f"the login used for {shard} may not set session_replication_role (a superuser may, or a login granted"
            f" SET ON PARAMETER session_replication_role): {exc}"
        ) from exc


def _continue_sequences(shard: str, tables: list[_Table]) -> None:
    """Serial ids go on past the replayed rows' (the restored sequences stand where the restore left them)."""
    with connections[shard].cursor() as cursor:
        for table in tables:
            for column, sequence in table.serials:
                cursor.execute(
                    sql.SQL("SELECT setval(%s, greatest((SELECT max({c}) FROM {t}), (SELECT last_value FROM {s})))")
                    .format(c=sql.Identifier(column), t=sql.Identifier(table.name), s=sql.SQL(sequence))
                    .as_string(cursor.connection),
                    [sequence],
                )
