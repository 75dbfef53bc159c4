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
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import psycopg2
import psycopg2.extras
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.types.string import TextLoader

from apps.audit import requests as operator_requests
from apps.audit.epochs import MARKER_TABLE, StreamEpochs, row_version, served_at
from apps.audit.models import CdcAction, CdcRequest
from apps.audit.pgoutput import (
    Begin,
    Commit,
    Decoder,
    LogicalMessage,
    Origin,
    Relation,
    RowChange,
    Truncate,
    lsn_to_str,
    str_to_lsn,
)
from apps.audit.sink import TYPED_TABLES, AuditSink, Change, StorePosition, Transaction
from apps.audit.status import StatusBoard
from apps.audit.stops import SchemaDrift, SlotGap, StreamStopped, UndecodableChange, check_relation
from apps.audit.stream_state import (
    Gap,
    abandon_history,
    deletion_version,
    record_gap,
    record_slot_release,
    register_slot,
    slot_owner,
    slot_released_at,
    write_deletions,
)
from apps.common.faults import crash_point
from apps.observability.metrics import CDC_ORIGIN_TRANSACTIONS_SKIPPED
from apps.sharding.placement import BUCKET_COLUMNS
from apps.sharding.routing import shard_map
from apps.sharding.shardmap import DatabaseServer

log = logging.getLogger(__name__)

SNAPSHOT_CHUNK_ROWS = 20_000
HEARTBEAT_PREFIX = "shardwallet_heartbeat"
HEARTBEATS_KEPT = 100
MAX_BACKOFF_SECONDS = 10.0
# Snapshot and backfill rows are numbered from here, streamed changes below it: the two
# never share a key (shard, commit_lsn, seq) in audit.changes, whatever their positions.
SNAPSHOT_SEQ_BASE = 1 << 31
RELEASE_WAIT_SECONDS = 5.0


class CdcError(RuntimeError):
    """The shard is set up in a way the reader will not fix by itself."""


class _LsnLoader(Loader):
    """pg_lsn as the integer the stream uses (psycopg leaves it as text)."""

    def load(self, data: Buffer) -> int:
        return str_to_lsn(bytes(data).decode())


# The servers drop a client whose connection stops taking data for `tcp_user_timeout` (5 s in
# docs/DEPLOY.md: a vanished client's locks are freed soon). A CDC busy writing a batch to the
# store stops reading for longer than that while the shard sends, and its stream was cut and
# restarted from the confirmed position, again and again under load and after a failover. Its
# own sessions wait as long as the walsender's own timeout (wal_sender_timeout, 60 s), which
# still ends the session of a CDC that is really gone.
CDC_TCP_USER_TIMEOUT_MS = 60_000


def conninfo(server: DatabaseServer, **extra: Any) -> str:
    """The CDC's connection string: UTC text values, and patience with a CDC busy writing
    (keepalives come with every server's conninfo)."""
    options = f"-c TimeZone=UTC -c tcp_user_timeout={CDC_TCP_USER_TIMEOUT_MS}"
    cdc = {"application_name": "shardwallet_cdc", "options": options}
    return server.conninfo(**{**cdc, **extra})


# The reader's own publication change gives up this soon on a lock it cannot take, well within
# PostgreSQL's deadlock_timeout (1 s): it locks the tables one by one, and a shard being migrated
# while the reader sees it (shard_add) holds some of them and waits for others, so the reader is
# the one to step back and try again, never the migration.
PUBLICATION_LOCK_TIMEOUT = "100ms"


def ensure_publication(
    server: DatabaseServer, publication: str, tables: list[str], *, lock_timeout: str | None = None
) -> None:
    """Create the shard's publication, or bring its table list up to date; nothing when it is.

    `migrate_shards` does it as the tables' owner; the CDC's own call then changes nothing, so
    a CDC login that may only read (shardwallet_cdc) needs no ownership."""
    table_list = sql.SQL(", ").join(sql.Identifier(t) for t in tables)
    with psycopg.connect(conninfo(server), autocommit=True) as conn:
        if lock_timeout is not None:
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(lock_timeout)))
        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [publication]).fetchone()
        if exists:
            published = conn.execute(
                "SELECT tablename FROM pg_publication_tables WHERE pubname = %s AND schemaname = 'public'",
                [publication],
            ).fetchall()
            if {row[0] for row in published} == set(tables):
                return
        verb = "ALTER PUBLICATION {} SET TABLE {}" if exists else "CREATE PUBLICATION {} FOR TABLE {}"
        conn.execute(sql.SQL(verb).format(sql.Identifier(publication), table_list))


def captured_tables(configured: list[str]) -> list[str]:
    """The configured tables and, always, the move journal: without it the epochs that order a
    moved row's versions would not be stamped, nor a TRUNCATE's buckets known."""
    return [*configured, MARKER_TABLE] if MARKER_TABLE not in configured else list(configured)


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
    """Follows one shard until `stop` is set: reconnects with backoff after a failure, and
    waits for an operator after a stop (apps.audit.stops)."""

    def __init__(
        self,
        server: DatabaseServer,
        sink: AuditSink,
        board: StatusBoard,
        stop: threading.Event,
        *,
        slot: str,
        store: uuid.UUID,
        publication: str,
        tables: list[str],
        batch_max_changes: int,
        batch_max_seconds: float,
        stopped_retry_seconds: float = 60.0,
    ) -> None:
        super().__init__(name=f"cdc-{server.alias}", daemon=True)
        self.server = server
        self.shard = server.alias
        self.sink = sink
        self.board = board
        self.stop = stop
        self.slot = slot
        self.store = store
        self.publication = publication
        self.tables = captured_tables(tables)
        self.batch_max_changes = batch_max_changes
        self.batch_max_seconds = batch_max_seconds
        self.stopped_retry_seconds = stopped_retry_seconds
        self.epochs = StreamEpochs()
        self.skip: CdcRequest | None = None  # an operator's request to leave out one transaction
        self.stop_cause: str | None = None  # why the stream last stopped, for the gap an operator resolves
        self.timeline = 0  # the shard's timeline (IDENTIFY_SYSTEM), recorded with each position
        self.generation = 0  # of the store's snapshot the stream goes on from (StorePosition)

    def run(self) -> None:
        delay = 0.5
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.stream()
            except StreamStopped as stopped:
                self._report_stopped(stopped)
                if isinstance(stopped, SlotGap):
                    self._refuse_skip(
                        f"the stream stopped ({stopped.cause}), which only cdc_resnapshot resolves; skip at"
                    )
                self._wait_for_operator()
                delay = 0.5
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

    def _report_stopped(self, stopped: StreamStopped) -> None:
        log.error("cdc STOPPED the stream of %s (%s): %s", self.shard, stopped.cause, stopped.detail)
        self.stop_cause = stopped.cause
        self.board.update(self.shard, connected=False, last_error=stopped.detail[:500], **stopped.as_status())

    def _wait_for_operator(self) -> None:
        """Until an operator's request for this shard arrives, or a while has passed (the
        cause may have been fixed: a column restored, a slot put back)."""
        deadline = time.monotonic() + self.stopped_retry_seconds
        while not self.stop.wait(1.0):
            if time.monotonic() > deadline or operator_requests.pending(self.shard) is not None:
                return

    # -- one connection's life -----------------------------------------------------------

    def stream(self) -> None:
        request = operator_requests.pending(self.shard)
        ensure_publication(self.server, self.publication, self.tables, lock_timeout=PUBLICATION_LOCK_TIMEOUT)
        conn = psycopg2.connect(conninfo(self.server), connection_factory=psycopg2.extras.LogicalReplicationConnection)
        streaming = False
        try:
            cur = conn.cursor()
            cur.execute("IDENTIFY_SYSTEM")
            self.timeline = int(cur.fetchone()[1])  # type: ignore[index]
            # The stream restarts at the confirmed position: the markers the table holds now
            # stamp the re-sent transactions as the first pass did (a marker inserted after a
            # transaction's commit has a higher wal_lsn and does not count for it).
            self.epochs = StreamEpochs()
            self._prepare(cur, request)
            with psycopg.connect(conninfo(self.server), autocommit=True) as markers:
                self.epochs.load(markers)
            self.board.update(self.shard, move_markers=len(self.epochs), slot=self.slot)
            self._hold_slot()
            streaming = True
            # status_interval: psycopg2 also answers keepalives and, once everything received
            # is confirmed, moves the confirmed position on to the server's WAL end (WAL with
            # nothing for the store: never past a message, so never past a heartbeat).
            cur.start_replication(
                slot_name=self.slot,
                decode=False,
                options={"proto_version": "1", "publication_names": self.publication, "messages": "true"},
                status_interval=1,
            )
            self.board.update(
                self.shard, connected=True, last_error="", disconnected_since=None, stopped=None, stopped_detail="",
                stopped_lsn=None, stopped_commit_lsn=None,
            )  # fmt: skip
            log.info("cdc streaming %s from slot %s", self.shard, self.slot)
            self._consume(cur)
        finally:
            self.board.update(self.shard, connected=False, disconnected_since=time.time())
            conn.close()
            if streaming:
                self._release_slot()

    def _hold_slot(self) -> None:
        """From here the slot moves with this reader: no release position stands for it."""
        with psycopg.connect(conninfo(self.server), autocommit=True) as conn:
            record_slot_release(conn, self.slot, None)

    def _release_slot(self) -> None:
        """Note where the slot stands once this reader has let go of it, so that the next one
        sees whether anyone moved it in between (`_prepare`). Best effort: a shard that is
        down, or a reader that is killed, leaves none (the heartbeat check still applies)."""
        try:
            deadline = time.monotonic() + RELEASE_WAIT_SECONDS
            with psycopg.connect(conninfo(self.server, connect_timeout=3), autocommit=True) as conn:
                while time.monotonic() < deadline:
                    row = conn.execute(
                        "SELECT active, pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint FROM pg_replication_slots"
                        " WHERE slot_name = %s",
                        [self.slot],
                    ).fetchone()
                    if row is None:
                        return
                    if not row[0]:
                        record_slot_release(conn, self.slot, int(row[1]))
                        return
                    time.sleep(0.1)
        except psycopg.Error as exc:
            log.info("cdc could not note where %s's slot was released: %s", self.shard, exc)

    def _slot_state(self) -> tuple[tuple[Any, ...] | None, uuid.UUID | None, list[int], int | None]:
        """The slot (plugin, database, confirmed position, wal_status), its owner, recent
        heartbeats and where its last reader released it."""
        with psycopg.connect(conninfo(self.server), autocommit=True) as conn:
            row = conn.execute(
                "SELECT plugin, database, confirmed_flush_lsn::text, wal_status FROM pg_replication_slots"
                " WHERE slot_name = %s",
                [self.slot],
            ).fetchone()
            owner, heartbeats = slot_owner(conn, self.slot)
            return row, owner, heartbeats, slot_released_at(conn, self.slot)

    def _prepare(self, cur: Any, request: CdcRequest | None) -> None:
        """Check that the store can go on from the slot where it stopped; else stop. Carry
        out an operator's request; take the first snapshot; copy tables newly captured."""
        self.skip = request if request is not None and request.action == CdcAction.SKIP else None
        slot, owner, heartbeats, released = self._slot_state()
        if slot is not None and owner != self.store:
            if request is not None and request.action == CdcAction.RESNAPSHOT:
                operator_requests.finish(
                    request, ok=False, result="the slot belongs to another audit store: find that store; dropping"
                    " its slot would make a gap in it",
                )  # fmt: skip
            raise SlotGap(
                "foreign_slot",
                f"slot {self.slot} on {self.shard} was created by audit store {owner or 'unknown'}, not by this one"
                f" ({self.store}); refusing to read it (another store would miss what this one consumes)",
            )
        if slot is not None and (slot[0] != "pgoutput" or slot[1] != self.server.name):
            raise CdcError(f"slot {self.slot} on {self.shard} is for {slot[1]} with {slot[0]}, not pgoutput")
        position = self.sink.position(self.shard)
        if request is not None and request.action == CdcAction.RESNAPSHOT:
            self._resnapshot(cur, request, position, slot)
            return
        if position is None:
            if slot is not None:
                log.info("cdc dropping slot %s on %s: no complete snapshot in this store", self.slot, self.shard)
                drop_slot(self.server, self.slot)
            self._drop_legacy_slot()
            self._first_snapshot(cur)
            return
        held = lsn_to_str(position.confirmed_lsn)
        # First: a shard restored to an earlier point or failed over behind has lost its slot
        # too, but what matters is that it lost changes the store holds.
        self._check_history(cur, position)
        if slot is None or position.slot_name != self.slot:
            raise SlotGap(
                "slot_missing",
                f"slot {self.slot} is missing on {self.shard} (dropped, or a failover to a server without it): the"
                f" changes after {held}, where this store stopped, are lost to it",
                lsn=position.confirmed_lsn,
            )
        if slot[3] == "lost":
            raise SlotGap(
                "slot_lost",
                f"slot {self.slot} on {self.shard} was invalidated (its WAL passed max_slot_wal_keep_size and was"
                f" removed): the changes after {held}, where this store stopped, are lost to it",
                lsn=position.confirmed_lsn,
            )
        confirmed = str_to_lsn(slot[2]) if slot[2] else 0
        if released is not None and confirmed > max(released, position.confirmed_lsn):
            # Nobody but this store's reader may move the slot on, and it left it at `released`
            # (behind it is no move: a shard that crashed since brings back the position its
            # last checkpoint saved, and sends again what the store holds). Up to the store's
            # own position is no loss either: a promoted standby's copy of a permanent slot
            # may be past where the old primary's reader was last noted to let go.
            raise SlotGap(
                "slot_moved",
                f"slot {self.slot} on {self.shard} has confirmed {slot[2]}, but this store's reader left it at"
                f" {lsn_to_str(released)} (someone advanced it, or dropped and made it again): the changes after"
                f" {held}, where this store stopped, may be lost to it",
                lsn=position.confirmed_lsn,
            )
        passed = [lsn for lsn in heartbeats if position.confirmed_lsn < lsn <= confirmed]
        if passed:
            # The slot can move on by itself only over WAL without messages, never past a heartbeat.
            raise SlotGap(
                "slot_ahead",
                f"slot {self.slot} on {self.shard} has confirmed {slot[2]}, past a heartbeat at"
                f" {lsn_to_str(passed[0])} that this store, which stopped at {held}, never recorded (the store was"
                " restored from a backup, or someone else read the slot): the changes in between are not in it",
                lsn=position.confirmed_lsn,
            )
        self.generation = position.generation
        added = [table for table in self.tables if table not in position.tables]
        if added:
            self._backfill(added, position)
        self.board.update(self.shard, confirmed_lsn=position.confirmed_lsn, stream_epoch=position.stream_epoch)

    def _check_history(self, cur: Any, position: StorePosition) -> None:
        """Stop if the shard's WAL history does not hold the store's position: it failed over
        to a standby that was behind (its slot, if any, is behind the store), so the store
        holds changes the shard never had and the positions after the switch mean other
        changes. On the timeline the position was recorded on, a slot behind the store is
        fine: a crash of the shard (or of the reader between recording a position and
        confirming it) only sends again what the store holds."""
        if not position.timeline or position.timeline == self.timeline:
            return
        switched = _timeline_switch(cur, self.timeline, position.timeline)
        if switched is not None and position.confirmed_lsn <= switched:
            return  # the history is the same up to the store's position
        where = "never" if switched is None else f"only up to {lsn_to_str(switched)}"
        raise SlotGap(
            "slot_behind",
            f"{self.shard} is on timeline {self.timeline}, whose history {where} shares timeline"
            f" {position.timeline}, where this store recorded {lsn_to_str(position.confirmed_lsn)} (restored to an"
            " earlier point in time, or failed over to a server that was behind): the store holds changes the shard"
            " does not, and its slot, if it has one, is behind the store",
            lsn=position.confirmed_lsn,
        )

    def _branch_point(self, cur: Any, position: StorePosition) -> int | None:
        """Where the shard's history left the one the store followed, if that is before the
        store's position (the changes from there on are the shard's no more); else None."""
        if not position.timeline or position.timeline == self.timeline:
            return None
        switched = _timeline_switch(cur, self.timeline, position.timeline)
        return switched if switched is not None and switched < position.confirmed_lsn else None

    def _drop_legacy_slot(self) -> None:
        """A store made before slots carried the store's id read the slot named by the bare
        prefix; if this store completed that slot's snapshot, the slot is its own: drop it,
        so it does not hold the shard's WAL for ever."""
        legacy = self.slot.rsplit("_", 1)[0]
        if legacy != self.slot and self.sink.snapshot_complete(self.shard, legacy) and drop_slot(self.server, legacy):
            log.info("cdc dropped %s's slot %s, named before slots carried the store's id", self.shard, legacy)

    def _first_snapshot(self, cur: Any) -> None:
        self.sink.record_snapshot(self.shard, self.slot, 0, 0, completed=False)
        lsn, snapshot = self._new_slot_and_snapshot(cur)
        self.sink.record_snapshot(self.shard, self.slot, lsn, snapshot.rows, completed=True)
        self.generation = 0
        self.sink.record_position(self._position(lsn, snapshot.epoch))
        self.board.update(
            self.shard, snapshot_rows=snapshot.rows, confirmed_lsn=lsn, server_wal_lsn=lsn, stream_epoch=snapshot.epoch
        )

    def _resnapshot(
        self, cur: Any, request: CdcRequest, position: StorePosition | None, slot: tuple[Any, ...] | None
    ) -> None:
        """The operator's way out of a lost slot: a new slot and snapshot; rows the snapshot
        no longer has are marked deleted; the WAL range never read is recorded as a gap.

        The position is recorded after the gap and the request marked done last, so a crash
        half-way repeats the whole (the slot is then ahead of the old position: a stop that
        the still pending request resolves again)."""
        from_lsn = position.confirmed_lsn if position is not None else 0
        branch = self._branch_point(cur, position) if position is not None else None
        if slot is not None:
            drop_slot(self.server, self.slot)
        abandoned = 0
        if branch is not None and position is not None:
            abandoned = abandon_history(
                self.sink, shard=self.shard, branch_lsn=branch, generation=position.generation,
                timeline=position.timeline,
            )  # fmt: skip
            log.error("cdc: %s's history left the store's at %s: %d changes from there on moved to"
                      " audit.abandoned_changes (shard_replay applies them again)", self.shard, lsn_to_str(branch),
                      abandoned)  # fmt: skip
            from_lsn = branch
        lsn, snapshot = self._new_slot_and_snapshot(cur)
        stamp = lsn - 1
        write_deletions(
            self.sink, shard=self.shard, source_tables=self.tables, buckets=snapshot.served,
            version=deletion_version(snapshot.epoch, stamp), commit_lsn=stamp, commit_time=snapshot.time,
            keep_commit_lsn=stamp,
        )  # fmt: skip
        cause = self.stop_cause or "operator"
        record_gap(
            self.sink,
            Gap(self.shard, from_lsn, lsn, cause, "resnapshot", request.reason, request.requested_by),
        )
        self.sink.record_snapshot(self.shard, self.slot, lsn, snapshot.rows, completed=True)
        # A new generation: its position may be below the old one (a server that failed over).
        self.generation = position.generation + 1 if position is not None else 0
        self.sink.record_position(self._position(lsn, snapshot.epoch))
        self.board.update(self.shard, snapshot_rows=snapshot.rows, confirmed_lsn=lsn, stream_epoch=snapshot.epoch)
        self.board.add(self.shard, gaps_recorded=1)
        also = self._moved_away_since(from_lsn) if from_lsn else []
        for first, last, target in also:
            log.error("cdc: buckets %s..%s moved from %s to %s during the gap: re-snapshot %s too", first, last,
                      self.shard, target, target)  # fmt: skip
        operator_requests.finish(
            request,
            ok=True,
            result=f"new slot and snapshot at {lsn_to_str(lsn)} ({snapshot.rows} rows); gap recorded from"
            f" {lsn_to_str(from_lsn)} to {lsn_to_str(lsn)}"
            + (
                f"; the shard's history left the store's at {lsn_to_str(from_lsn)}: {abandoned} changes after it"
                " are in audit.abandoned_changes (shard_replay applies them again)"
                if branch is not None
                else ""
            )
            + "".join(
                f"; buckets {first}..{last} moved to {target} during the gap (this snapshot no longer has them):"
                f" re-snapshot {target} too"
                for first, last, target in also
            ),
        )

    def _moved_away_since(self, from_lsn: int) -> list[tuple[int, int, str]]:
        """Ranges this shard fenced for a move after `from_lsn` and did not take back: their
        rows in the store miss this shard's changes in a gap, and only their new owner's
        snapshot has them now."""
        with psycopg.connect(conninfo(self.server), autocommit=True) as conn:
            rows = conn.execute(
                f"SELECT DISTINCT f.first_bucket, f.last_bucket, f.target FROM {MARKER_TABLE} f"  # noqa: S608
                " WHERE f.kind = 'fence' AND f.source = %s AND f.wal_lsn > %s::pg_lsn AND NOT EXISTS"
                f" (SELECT 1 FROM {MARKER_TABLE} u WHERE u.kind = 'unfence' AND u.move_id = f.move_id"
                "  AND u.wal_lsn > f.wal_lsn)"
                " ORDER BY 1",
                [self.shard, lsn_to_str(from_lsn)],
            ).fetchall()
        return [(int(first), int(last), str(target)) for first, last, target in rows]

    def _new_slot_and_snapshot(self, cur: Any) -> tuple[int, Snapshot]:
        """A new slot, registered to this store first, and a copy of the tables as of its start."""
        with psycopg.connect(conninfo(self.server), autocommit=True) as conn:
            register_slot(conn, self.slot, self.store)
        cur.execute(
            sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT")
            .format(sql.Identifier(self.slot))
            .as_string(None)
        )
        _slot, consistent_point, snapshot_name, _plugin = cur.fetchone()
        lsn = str_to_lsn(consistent_point)
        snapshot = self._copy_snapshot(snapshot_name, lsn, self.tables)
        log.info("cdc snapshot of %s: %d rows at %s", self.shard, snapshot.rows, consistent_point)
        return lsn, snapshot

    def _backfill(self, tables: list[str], position: StorePosition) -> None:
        """Copy the rows of tables newly captured. They are in the publication already, so
        their changes from now on stream; the copy, stamped at the store's position, sorts
        below every one of those."""
        snapshot = self._copy_snapshot(None, position.confirmed_lsn, tables)
        self.sink.record_position(
            StorePosition(self.shard, self.slot, position.confirmed_lsn, position.stream_epoch,
                          tuple(dict.fromkeys([*position.tables, *tables])), self.timeline, position.generation)
        )  # fmt: skip
        log.info("cdc backfilled %s on %s: %d rows", ", ".join(tables), self.shard, snapshot.rows)

    def _copy_snapshot(self, snapshot_name: str | None, consistent_lsn: int, tables: list[str]) -> Snapshot:
        """Copy `tables` as of the slot's starting point (its exported snapshot), or as of
        now for a backfill.

        Rows are stamped with the LSN just before the consistent point (a backfill's: the
        store's position), so they sort before every transaction streamed from there, and
        with the stream epoch at that point; they are numbered from SNAPSHOT_SEQ_BASE, so no
        streamed change can share their key whatever its position. Only the rows of buckets
        the shard serves are copied: a range being copied in, or left behind by a move, is
        another shard's.
        """
        stamp = consistent_lsn - 1
        seq = 0
        with psycopg.connect(conninfo(self.server)) as conn:
            conn.adapters.register_loader("pg_lsn", _LsnLoader)
            # JSON as its text, as the stream sends it (metadata): the same value either way.
            conn.adapters.register_loader("jsonb", TextLoader)
            conn.adapters.register_loader("json", TextLoader)
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if snapshot_name is not None:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
            snapshot_time = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            self.epochs.load(conn)
            epoch = self.epochs.at(consistent_lsn)
            served = [b for (b,) in conn.execute("SELECT bucket FROM sharding_bucket_owner WHERE state = 'owned'")]
            unowned = self._fenced_unowned(conn)
            for table in tables:
                query = sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(table))
                if table in BUCKET_COLUMNS:
                    query = sql.SQL(
                        "SELECT * FROM {table} WHERE sharding_serves({column})"
                        " OR sharding_bucket({column}) = ANY({unowned}) ORDER BY 1"
                    ).format(
                        table=sql.Identifier(table), column=sql.Identifier(BUCKET_COLUMNS[table]),
                        unowned=sql.Literal(unowned),
                    )  # fmt: skip
                with conn.cursor(name=f"cdc_snapshot_{table}") as cursor:
                    cursor.itersize = SNAPSHOT_CHUNK_ROWS
                    cursor.execute(query)
                    while chunk := cursor.fetchmany(SNAPSHOT_CHUNK_ROWS):
                        names = [d.name for d in cursor.description or []]
                        tx = Transaction(self.shard, 0, stamp, stamp, snapshot_time, stream_epoch=epoch)
                        for values in chunk:
                            seq += 1
                            row = dict(zip(names, values, strict=True))
                            tx.changes.append(Change(table, "snapshot", None, row, SNAPSHOT_SEQ_BASE + seq))
                        self.sink.write([tx])
            conn.rollback()
        return Snapshot(seq, epoch, served, snapshot_time)

    def _fenced_unowned(self, conn: psycopg.Connection[Any]) -> list[int]:
        """The buckets this shard keeps fenced for a move whose target's snapshot in this store
        will not hold them: the target has not switched yet (no shard serves them: this
        fenced copy, which no one may change, is the only one), or its snapshot was taken
        before the switch. The target's changes after the switch stream at a higher epoch."""
        fences = conn.execute(
            f"SELECT DISTINCT ON (o.bucket) o.bucket, m.move_id, m.target FROM sharding_bucket_owner o"  # noqa: S608
            f" JOIN {MARKER_TABLE} m ON m.kind = 'fence' AND m.source = %s"
            "  AND o.bucket BETWEEN m.first_bucket AND m.last_bucket"
            " WHERE o.state = 'fenced' ORDER BY o.bucket, m.wal_lsn DESC",
            [self.shard],
        ).fetchall()
        unowned: list[int] = []
        verdicts: dict[tuple[int, str], bool] = {}
        for bucket, move_id, target in fences:
            key = (int(move_id), str(target))
            if key not in verdicts:
                verdicts[key] = not self._target_snapshot_has(*key)
            if verdicts[key]:
                unowned.append(int(bucket))
        if unowned:
            log.info("cdc snapshot of %s takes %d fenced bucket(s) no other snapshot holds", self.shard, len(unowned))
        return unowned

    def _target_snapshot_has(self, move_id: int, target: str) -> bool:
        """Whether the target of move `move_id` switched before its snapshot in this store
        (taken, under way, or still to come)."""
        server = shard_map().shards.get(target)
        if server is None:
            return False
        with psycopg.connect(conninfo(server), autocommit=True) as conn:
            own = conn.execute(
                f"SELECT pg_wal_lsn_diff(max(wal_lsn), '0/0')::bigint FROM {MARKER_TABLE}"  # noqa: S608
                " WHERE kind = 'own' AND move_id = %s",
                [move_id],
            ).fetchone()
            if own is None or own[0] is None:
                return False  # not switched: no shard serves the range
            point = self.sink.snapshot_point(target, self.slot)
            if point is None:
                # Not complete: an unfinished snapshot's slot still stands at its consistent point.
                slot = conn.execute(
                    "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    [self.slot],
                ).fetchone()
                point = int(slot[0]) if slot is not None and slot[0] is not None else None
        return point is None or point > int(own[0])  # None: its snapshot is still to come, after the switch

    # -- streaming -----------------------------------------------------------------------

    def _consume(self, cur: Any) -> None:
        decoder = Decoder()
        open_tx: Transaction | None = None
        origin: str | None = None  # the open transaction's replication origin
        origin_rows = 0  # the open transaction's row changes dropped for its origin
        skipping = False  # leaving out the open transaction, as an operator asked
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
                    self.board.update(self.shard, server_wal_lsn=max(cur.wal_end, self._confirmed()))
                    last_status = now
                timeout = self.batch_max_seconds if batch else 0.5
                select.select([cur], [], [], timeout)
                continue
            if origin is not None and open_tx is not None and _is_skipped_row(decoder, message.payload):
                # A move's copy or clean-up: millions of rows are dropped here, undecoded and unheld.
                origin_rows += 1
                continue
            try:
                event = decoder.decode(message.payload)
                if isinstance(event, Relation):
                    check_relation(event, self.shard)
                if skipping and not isinstance(event, Commit):
                    continue
                done = self._take(event, open_tx, message.data_start)
            except Exception as exc:
                commit_lsn = open_tx.commit_lsn if open_tx is not None else None
                if isinstance(exc, StreamStopped) and not isinstance(exc, SchemaDrift):
                    raise
                if self.skip is not None and commit_lsn is not None and commit_lsn == self.skip.commit_lsn:
                    log.warning("cdc leaving out the transaction at %s on %s, as asked: %s", lsn_to_str(commit_lsn),
                                self.shard, exc)  # fmt: skip
                    skipping = True
                    continue
                if isinstance(exc, SchemaDrift):
                    exc.commit_lsn = commit_lsn  # the transaction an operator may leave out
                    raise
                reason = f"{type(exc).__name__}: {exc}".strip()[:500]
                where = "outside a transaction"
                if commit_lsn is not None:
                    where = f"in the transaction committed at {lsn_to_str(commit_lsn)}"
                self._refuse_skip(f"the change that fails is {where}, not in the transaction at")
                raise UndecodableChange(
                    f"cannot decode the change at {lsn_to_str(message.data_start)} on {self.shard} {where}: {reason}",
                    lsn=message.data_start,
                    commit_lsn=commit_lsn,
                ) from exc
            if isinstance(event, Begin):
                open_tx, origin, origin_rows = done, None, 0
            elif isinstance(event, Origin):
                origin = event.name
            elif isinstance(done, Transaction) and done is not open_tx:
                # A heartbeat: an empty transaction, so its position is confirmed with the batch.
                if not batch:
                    batch_since = now
                batch.append(done)
                batch_changes += 1
                if self._flush_due(batch_changes, batch_since, now):
                    self._flush(cur, batch)
                    batch, batch_changes = [], 0
            elif isinstance(event, Commit):
                assert open_tx is not None, "commit outside a transaction"  # noqa: S101
                open_tx.commit_lsn, open_tx.end_lsn = event.commit_lsn, event.end_lsn
                open_tx.confirm_lsn = event.end_lsn
                if skipping:
                    self._record_skipped(open_tx)
                    skipping = False
                elif self.skip is not None and open_tx.commit_lsn >= (self.skip.commit_lsn or 0):
                    self._refuse_skip("the stream decoded past it without a failure: nothing to leave out at")
                self._note_held(len(open_tx.changes))
                if origin is not None:
                    self._skip_origin(open_tx, origin, origin_rows)
                self._stamp(open_tx)
                if not batch:
                    batch_since = now
                    self.board.update(self.shard, oldest_unwritten_commit=open_tx.commit_time.timestamp())
                batch.append(open_tx)
                # An empty (skipped) transaction counts too: a long run of them is flushed, and
                # its position confirmed, as it goes, not only once the stream falls quiet.
                batch_changes += max(1, len(open_tx.changes))
                open_tx = None
                if self._flush_due(batch_changes, batch_since, now):
                    self._flush(cur, batch)
                    batch, batch_changes = [], 0
        if batch:
            self._flush(cur, batch)  # a clean stop leaves nothing to re-send

    def _flush_due(self, batch_changes: int, batch_since: float, now: float) -> bool:
        """A batch is written when it is big enough or old enough, even while messages keep coming."""
        return batch_changes >= self.batch_max_changes or now - batch_since >= self.batch_max_seconds

    def _note_held(self, changes: int) -> None:
        """The most changes one transaction has held in memory until its Commit (status)."""
        if changes > self.board.shards[self.shard].held_changes_peak:
            self.board.update(self.shard, held_changes_peak=changes)

    def _take(self, event: Any, open_tx: Transaction | None, data_start: int) -> Transaction | None:
        """Apply one decoded message; a Begin gives the new open transaction, a heartbeat an empty one."""
        if isinstance(event, Begin):
            return Transaction(self.shard, event.xid, event.final_lsn, 0, event.commit_time)
        if isinstance(event, RowChange):
            assert open_tx is not None, "row change outside a transaction"  # noqa: S101
            # Projected now: a value the store cannot hold fails here, where its position is known.
            table = TYPED_TABLES.get(event.relation.name)
            values = table.values(event.op, event.old, event.new) if table is not None else None
            seq = len(open_tx.changes) + 1
            if seq >= SNAPSHOT_SEQ_BASE:
                raise ValueError(f"a transaction of more than {SNAPSHOT_SEQ_BASE - 1} changes")
            open_tx.changes.append(Change(event.relation.name, event.op, event.old, event.new, seq, values))
        elif isinstance(event, Truncate):
            assert open_tx is not None, "truncate outside a transaction"  # noqa: S101
            for relation in event.relations:
                log.error("cdc: table %s TRUNCATED on %s; its rows are marked deleted in the audit store",
                          relation.name, self.shard)  # fmt: skip
                open_tx.changes.append(Change(relation.name, "truncate", None, None, len(open_tx.changes) + 1))
        elif isinstance(event, LogicalMessage) and event.prefix == HEARTBEAT_PREFIX:
            beat = Transaction(self.shard, 0, event.lsn, event.lsn, datetime.now(tz=UTC))
            beat.confirm_lsn = max(event.lsn, data_start)  # the end of its record: what emitting it returned
            beat.heartbeat_at = _heartbeat_time(event.content)
            beat.stream_epoch = self.epochs.at(event.lsn)
            return beat
        return None

    def _refuse_skip(self, why: str) -> None:
        """An operator's skip that does not name the failing transaction does nothing: mark it failed."""
        if self.skip is not None:
            assert self.skip.commit_lsn is not None  # noqa: S101
            operator_requests.finish(self.skip, ok=False, result=f"{why} {lsn_to_str(self.skip.commit_lsn)}")
            self.skip = None

    def _record_skipped(self, tx: Transaction) -> None:
        request = self.skip
        assert request is not None  # noqa: S101
        tx.changes = []
        cause = self.stop_cause or "undecodable"
        record_gap(
            self.sink, Gap(self.shard, tx.commit_lsn, tx.end_lsn, cause, "skip", request.reason, request.requested_by)
        )
        self.board.add(self.shard, gaps_recorded=1)
        operator_requests.finish(
            request, ok=True, result=f"left out the transaction committed at {lsn_to_str(tx.commit_lsn)}; gap recorded"
        )
        self.skip = None

    def _skip_origin(self, tx: Transaction, origin: str, dropped: int) -> None:
        """Leave out a replicated or mover transaction's rows; it stays in the batch (empty)
        so that its position is confirmed with the rest.

        Its row changes were dropped as they arrived (`_is_skipped_row`), all but the move
        journal's, which is kept whatever the origin: it is what stamps the epochs, and a
        restarted reader reads it from the shard's table, which knows no origins. A Truncate
        under an origin is left out here.
        """
        skipped = dropped + sum(change.table != MARKER_TABLE for change in tx.changes)
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

    def _position(self, confirmed_lsn: int, stream_epoch: int) -> StorePosition:
        return StorePosition(self.shard, self.slot, confirmed_lsn, stream_epoch, tuple(self.tables), self.timeline,
                             self.generation)  # fmt: skip

    def _confirmed(self) -> int:
        return self.board.shards[self.shard].confirmed_lsn

    def _flush(self, cur: Any, batch: list[Transaction]) -> None:
        written = self.sink.write(batch)  # raises on failure: nothing is confirmed, the slot re-sends
        self._apply_truncations(batch)
        if written:
            crash_point("cdc_after_sink_write")  # tests: written but never confirmed
        last = batch[-1]
        confirm = last.confirm_lsn
        # The store records the position before the slot hears of it: a slot is never ahead of its store.
        self.sink.record_position(self._position(confirm, last.stream_epoch))
        cur.send_feedback(write_lsn=confirm, flush_lsn=confirm, force=True)
        fields: dict[str, Any] = {}
        beats = [tx.heartbeat_at for tx in batch if tx.heartbeat_at is not None]
        if beats:
            fields["heartbeat_confirmed_at"] = max(beats)
        commits = [tx for tx in batch if tx.xid]
        if commits:
            fields["last_commit_time"] = commits[-1].commit_time.isoformat()
        self.board.update(
            self.shard, confirmed_lsn=confirm, server_wal_lsn=max(cur.wal_end, confirm), oldest_unwritten_commit=None,
            stream_epoch=last.stream_epoch, **fields,
        )  # fmt: skip
        self.board.add(self.shard, transactions_written=len(commits), changes_written=written)

    def _apply_truncations(self, batch: list[Transaction]) -> None:
        """A TRUNCATE of a captured table deletes its rows of this shard's buckets in the store,
        as of the truncating change (rows the same transaction inserted after it stay). The
        buckets are those served at the truncate's commit, not now: a range moved in since
        (the reader may apply it long after) was not emptied by it."""
        truncations = [(tx, change) for tx in batch for change in tx.changes if change.op == "truncate"]
        if not truncations:
            return
        with psycopg.connect(conninfo(self.server), autocommit=True) as conn:
            served = {tx.commit_lsn: served_at(conn, self.shard, tx.commit_lsn) for tx, _ in truncations}
        for tx, change in truncations:
            write_deletions(
                self.sink, shard=self.shard, source_tables=[change.table], buckets=served[tx.commit_lsn],
                version=row_version(tx.stream_epoch, tx.commit_lsn, change.seq), commit_lsn=tx.commit_lsn,
                commit_time=tx.commit_time,
            )  # fmt: skip
            self.board.add(self.shard, truncations=1)


def _is_skipped_row(decoder: Decoder, payload: bytes) -> bool:
    """An Insert, Update or Delete of a table other than the move journal: what an origin's
    transaction drops without decoding (its Relation was decoded before it)."""
    relation = decoder.row_relation(payload)
    return relation is not None and relation.name != MARKER_TABLE


@dataclass(frozen=True)
class Snapshot:
    rows: int
    epoch: int
    served: list[int]  # the buckets the shard served in the snapshot
    time: datetime


def _timeline_switch(cur: Any, current: int, earlier: int) -> int | None:
    """Where the shard's history (timeline `current`) left timeline `earlier`; None if it
    never was on it. Read from the server's timeline history file."""
    if earlier > current:
        return None
    cur.execute(f"TIMELINE_HISTORY {int(current)}")
    _name, content = cur.fetchone()
    text = bytes(content).decode() if isinstance(content, bytes | memoryview) else str(content)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit() and int(fields[0]) == earlier:
            return str_to_lsn(fields[1])
    return None


def _heartbeat_time(content: bytes) -> float | None:
    try:
        return float(orjson.loads(content)["at"])
    except (ValueError, KeyError, TypeError):
        return None


def emit_heartbeat(conn: psycopg.Connection[Any], slot: str) -> float:
    """Write a heartbeat into the shard's WAL: a non-transactional logical message, which
    the stream delivers at once and the reader records and confirms, so the reader's lag
    is measured in time, not only in bytes. Its position is kept with the slot's owner
    (the last HEARTBEATS_KEPT): a slot found past one the store never recorded has
    skipped changes (`_prepare`)."""
    at = time.time()
    conn.execute(
        "UPDATE shardwallet_cdc_slot SET heartbeat_lsns = (heartbeat_lsns"
        " || pg_logical_emit_message(false, %s, %s))[greatest(1, cardinality(heartbeat_lsns) + 2 - %s):]"
        " WHERE slot_name = %s",
        [HEARTBEAT_PREFIX, orjson.dumps({"at": at}).decode(), HEARTBEATS_KEPT, slot],
    )
    return at
