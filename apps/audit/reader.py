"""One shard's change stream: publication, slot, initial snapshot, then pgoutput over
the streaming replication protocol, written to the audit store in whole transactions.

At-least-once, never a gap: a transaction is buffered until its Commit, written with its
batch, and only after the sink's insert returned is the slot told (`flush_lsn`) that it
may forget it. A crash anywhere re-sends exactly the transactions not yet confirmed, and
the idempotent sink collapses the ones written twice.

Bucket moves: a transaction that carries a replication origin (the subscription copying a
range into its target, the mover's clean-up of the source) is no money moving, so none of
its rows enter the store; its position is confirmed all the same. Each transaction is
stamped with the shard's stream epoch (apps.audit.epochs) so that a moved row's versions
from its new shard outrank those from its old one.
"""

from __future__ import annotations

import logging
import random
import select
import threading
import time
from typing import Any

import psycopg
import psycopg2
import psycopg2.extras
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader

from apps.audit.epochs import MARKER_TABLE, StreamEpochs
from apps.audit.pgoutput import Begin, Commit, Decoder, Origin, RowChange, Truncate, str_to_lsn
from apps.audit.sink import AuditSink, Change, Transaction
from apps.audit.status import StatusBoard
from apps.common.faults import crash_point
from apps.observability.metrics import CDC_ORIGIN_TRANSACTIONS_SKIPPED
from apps.sharding.placement import BUCKET_COLUMNS
from apps.sharding.shardmap import DatabaseServer

log = logging.getLogger(__name__)

SNAPSHOT_CHUNK_ROWS = 20_000
MAX_BACKOFF_SECONDS = 10.0


class CdcError(RuntimeError):
    """The shard is set up in a way the reader will not fix by itself."""


class _LsnLoader(Loader):
    """pg_lsn as the integer the stream uses (psycopg leaves it as text)."""

    def load(self, data: Buffer) -> int:
        return str_to_lsn(bytes(data).decode())


def conninfo(server: DatabaseServer, **extra: Any) -> str:
    """The CDC's connection string: UTC text values, and keepalives to notice a shard that vanished."""
    cdc = {
        "application_name": "shardwallet_cdc",
        "options": "-c TimeZone=UTC",
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }
    return server.conninfo(**{**cdc, **extra})


def ensure_publication(server: DatabaseServer, publication: str, tables: list[str]) -> None:
    """Create the shard's publication, or bring its table list up to date."""
    table_list = sql.SQL(", ").join(sql.Identifier(t) for t in tables)
    with psycopg.connect(conninfo(server), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [publication]).fetchone()
        verb = "ALTER PUBLICATION {} SET TABLE {}" if exists else "CREATE PUBLICATION {} FOR TABLE {}"
        conn.execute(sql.SQL(verb).format(sql.Identifier(publication), table_list))


def drop_slot(server: DatabaseServer, slot: str, timeout: float = 10) -> bool:
    """Drop `slot` once no process streams from it; False if there was none."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(conninfo(server), autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone()
            if row is None:
                return False
            if not row[0]:
                conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
                return True
            if time.monotonic() > deadline:
                raise CdcError(f"slot {slot} on {server.alias} is still in use")
            time.sleep(0.2)


class ShardReader(threading.Thread):
    """Follows one shard until `stop` is set, reconnecting with backoff after any failure."""

    def __init__(
        self,
        server: DatabaseServer,
        sink: AuditSink,
        board: StatusBoard,
        stop: threading.Event,
        *,
        slot: str,
        publication: str,
        tables: list[str],
        batch_max_changes: int,
        batch_max_seconds: float,
    ) -> None:
        super().__init__(name=f"cdc-{server.alias}", daemon=True)
        self.server = server
        self.shard = server.alias
        self.sink = sink
        self.board = board
        self.stop = stop
        self.slot = slot
        self.publication = publication
        self.tables = tables
        self.batch_max_changes = batch_max_changes
        self.batch_max_seconds = batch_max_seconds
        self.epochs = StreamEpochs()

    def run(self) -> None:
        delay = 0.5
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.stream()
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}".strip()[:500]
                log.warning("cdc stream of %s failed, reconnecting: %s", self.shard, message)
                self.board.update(self.shard, connected=False, last_error=message)
                self.board.add(self.shard, reconnects=1)
                if time.monotonic() - started > 30:
                    delay = 0.5  # it had been streaming: a fresh failure, not a flapping one
                # Full jitter: shards restarted together are not hammered in lockstep.
                self.stop.wait(random.uniform(delay / 2, delay))  # noqa: S311
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    # -- one connection's life -----------------------------------------------------------

    def stream(self) -> None:
        ensure_publication(self.server, self.publication, self.tables)
        conn = psycopg2.connect(conninfo(self.server), connection_factory=psycopg2.extras.LogicalReplicationConnection)
        try:
            cur = conn.cursor()
            # The stream restarts at the confirmed position: the markers the table holds now
            # stamp the re-sent transactions as the first pass did (a marker inserted after a
            # transaction's commit has a higher wal_lsn and does not count for it).
            self.epochs = StreamEpochs()
            self._ensure_slot(cur)
            with psycopg.connect(conninfo(self.server), autocommit=True) as markers:
                self.epochs.load(markers)
            self.board.update(self.shard, move_markers=len(self.epochs))
            # status_interval: psycopg2 also answers keepalives and, once everything received
            # is confirmed, moves the confirmed position on to the server's WAL end.
            cur.start_replication(
                slot_name=self.slot,
                decode=False,
                options={"proto_version": "1", "publication_names": self.publication},
                status_interval=1,
            )
            self.board.update(self.shard, connected=True, last_error="", disconnected_since=None)
            log.info("cdc streaming %s from slot %s", self.shard, self.slot)
            self._consume(cur)
        finally:
            self.board.update(self.shard, connected=False, disconnected_since=time.time())
            conn.close()

    def _ensure_slot(self, cur: Any) -> None:
        """A slot this store has the initial snapshot of; else a new slot and snapshot."""
        with psycopg.connect(conninfo(self.server), autocommit=True) as conn:
            row = conn.execute(
                "SELECT plugin, database, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                [self.slot],
            ).fetchone()
        if row is not None and (row[0] != "pgoutput" or row[1] != self.server.name):
            raise CdcError(f"slot {self.slot} on {self.shard} is for {row[1]} with {row[0]}, not pgoutput")
        if row is not None and self.sink.snapshot_complete(self.shard, self.slot):
            confirmed = str_to_lsn(row[2]) if row[2] else 0
            self.board.update(self.shard, confirmed_lsn=confirmed, server_wal_lsn=confirmed)
            return
        if row is not None:
            # A slot whose snapshot never completed here (or another store's): start over.
            log.info("cdc dropping slot %s on %s: no complete snapshot in this store", self.slot, self.shard)
            drop_slot(self.server, self.slot)
        self.sink.record_snapshot(self.shard, self.slot, 0, 0, completed=False)
        cur.execute(
            sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT")
            .format(sql.Identifier(self.slot))
            .as_string(None)
        )
        _slot, consistent_point, snapshot_name, _plugin = cur.fetchone()
        lsn = str_to_lsn(consistent_point)
        rows = self._copy_snapshot(snapshot_name, lsn)
        self.sink.record_snapshot(self.shard, self.slot, lsn, rows, completed=True)
        self.board.update(self.shard, snapshot_rows=rows, confirmed_lsn=lsn, server_wal_lsn=lsn)
        log.info("cdc snapshot of %s: %d rows at %s", self.shard, rows, consistent_point)

    def _copy_snapshot(self, snapshot_name: str, consistent_lsn: int) -> int:
        """Copy the tables as of the slot's starting point (its exported snapshot).

        Rows are stamped with the LSN just before the slot's consistent point: they sort
        before, and can never share a key with, the first streamed transaction; and with
        the stream epoch at that point. Only the rows of buckets the shard serves are
        copied: a range being copied in, or left behind by a move, is another shard's.
        """
        stamp = consistent_lsn - 1
        seq = 0
        with psycopg.connect(conninfo(self.server)) as conn:
            conn.adapters.register_loader("pg_lsn", _LsnLoader)
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
            snapshot_time = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            self.epochs.load(conn)
            epoch = self.epochs.at(consistent_lsn)
            for table in self.tables:
                query = sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(table))
                if table in BUCKET_COLUMNS:
                    query = sql.SQL("SELECT * FROM {} WHERE sharding_serves({}) ORDER BY 1").format(
                        sql.Identifier(table), sql.Identifier(BUCKET_COLUMNS[table])
                    )
                with conn.cursor(name=f"cdc_snapshot_{table}") as cursor:
                    cursor.itersize = SNAPSHOT_CHUNK_ROWS
                    cursor.execute(query)
                    while chunk := cursor.fetchmany(SNAPSHOT_CHUNK_ROWS):
                        names = [d.name for d in cursor.description or []]
                        tx = Transaction(self.shard, 0, stamp, stamp, snapshot_time, stream_epoch=epoch)
                        for values in chunk:
                            seq += 1
                            row = dict(zip(names, values, strict=True))
                            tx.changes.append(Change(table, "snapshot", None, row, seq))
                        self.sink.write([tx])
            conn.rollback()
        return seq

    def _consume(self, cur: Any) -> None:
        decoder = Decoder()
        open_tx: Transaction | None = None
        origin: str | None = None  # the open transaction's replication origin
        batch: list[Transaction] = []
        batch_changes = 0
        batch_since = 0.0
        last_status = 0.0
        while not self.stop.is_set():
            message = cur.read_message()
            now = time.monotonic()
            if message is None:
                if batch and now - batch_since >= self.batch_max_seconds:
                    self._flush(cur, batch)
                    batch, batch_changes = [], 0
                if now - last_status > 0.5:
                    wal_end = max(cur.wal_end, self._confirmed())
                    if open_tx is None and not batch:
                        # All received is written: psycopg2 confirms up to the server's WAL end itself.
                        self.board.update(self.shard, server_wal_lsn=wal_end, confirmed_lsn=wal_end)
                    else:
                        self.board.update(self.shard, server_wal_lsn=wal_end)
                    last_status = now
                timeout = self.batch_max_seconds if batch else 0.5
                select.select([cur], [], [], timeout)
                continue
            event = decoder.decode(message.payload)
            if isinstance(event, Begin):
                open_tx = Transaction(self.shard, event.xid, event.final_lsn, 0, event.commit_time)
                origin = None
            elif isinstance(event, Origin):
                origin = event.name
            elif isinstance(event, RowChange):
                assert open_tx is not None, "row change outside a transaction"  # noqa: S101
                open_tx.changes.append(
                    Change(event.relation.name, event.op, event.old, event.new, len(open_tx.changes) + 1)
                )
            elif isinstance(event, Truncate):
                assert open_tx is not None, "truncate outside a transaction"  # noqa: S101
                for relation in event.relations:
                    log.warning("cdc: %s truncated on %s", relation.name, self.shard)
                    open_tx.changes.append(Change(relation.name, "truncate", None, None, len(open_tx.changes) + 1))
            elif isinstance(event, Commit):
                assert open_tx is not None, "commit outside a transaction"  # noqa: S101
                open_tx.commit_lsn, open_tx.end_lsn = event.commit_lsn, event.end_lsn
                if origin is not None:
                    self._skip_origin(open_tx, origin)
                self._stamp(open_tx)
                if not batch:
                    batch_since = now
                    self.board.update(self.shard, oldest_unwritten_commit=open_tx.commit_time.timestamp())
                batch.append(open_tx)
                batch_changes += len(open_tx.changes)
                open_tx = None
                if batch_changes >= self.batch_max_changes:
                    self._flush(cur, batch)
                    batch, batch_changes = [], 0
        if batch:
            self._flush(cur, batch)  # a clean stop leaves nothing to re-send

    def _skip_origin(self, tx: Transaction, origin: str) -> None:
        """Leave out a replicated or mover transaction's rows; it stays in the batch (empty)
        so that its position is confirmed with the rest.

        The move journal is kept whatever the origin: it is what stamps the epochs, and a
        restarted reader reads it from the shard's table, which knows no origins.
        """
        skipped = sum(change.table != MARKER_TABLE for change in tx.changes)
        tx.changes = [change for change in tx.changes if change.table == MARKER_TABLE]
        self.board.add(self.shard, origin_transactions_skipped=1)
        CDC_ORIGIN_TRANSACTIONS_SKIPPED.labels(shard=self.shard).inc()
        log.debug("cdc skipped a transaction of origin %s on %s (%d changes)", origin, self.shard, skipped)

    def _stamp(self, tx: Transaction) -> None:
        """Take the transaction's own 'own' markers, then stamp it with the stream epoch."""
        for change in tx.changes:
            if change.table == MARKER_TABLE and change.new is not None and self.epochs.add(change.new):
                log.info(
                    "cdc: %s serves buckets %s..%s from epoch %s (move %s)", self.shard, change.new["first_bucket"],
                    change.new["last_bucket"], change.new["epoch"], change.new["move_id"],
                )  # fmt: skip
                self.board.update(self.shard, move_markers=len(self.epochs))
        tx.stream_epoch = self.epochs.at(tx.commit_lsn)

    def _confirmed(self) -> int:
        return self.board.shards[self.shard].confirmed_lsn

    def _flush(self, cur: Any, batch: list[Transaction]) -> None:
        written = self.sink.write(batch)  # raises on failure: nothing is confirmed, the slot re-sends
        crash_point("cdc_after_sink_write")  # tests: written but never confirmed
        end = batch[-1].end_lsn
        cur.send_feedback(write_lsn=end, flush_lsn=end, force=True)
        self.board.update(
            self.shard,
            confirmed_lsn=end,
            server_wal_lsn=max(cur.wal_end, end),
            oldest_unwritten_commit=None,
            last_commit_time=batch[-1].commit_time.isoformat(),
            stream_epoch=batch[-1].stream_epoch,
        )
        self.board.add(self.shard, transactions_written=len(batch), changes_written=written)
