"""Moving a bucket range to another shard online: copy, catch up, verify, switch, clean up.

Each phase is idempotent and decides from the databases' own state, not from the mover's
memory, so a mover killed anywhere resumes by running the same command again:

- copying: a publication on the source filtered to the range (PostgreSQL's row filter),
  a subscription on the target that copies a consistent snapshot of every table and then
  streams later changes (PostgreSQL's own logical replication, like Citus's shard move);
- catching_up: until the replication lag is under a bound;
- verifying: the target's wallets equal the sums of their entries, and per bucket and
  table the row counts, money sums and content hashes match the source's (under traffic
  this may differ for the newest rows; the switch repeats it exactly);
- switching: fence the range on the source (waits for writes in flight, refuses new
  ones), wait until the target has applied the source's WAL up to the fence, pin a
  snapshot of the target, make the target serve the range, bump the map's epoch. Writes to
  the range pause for this phase only; if it overruns its bound the source is unfenced and
  the move stays where it was (nothing changed). Then the frozen source and the pinned
  snapshot are compared exactly; a difference stops the move before any clean-up;
- cleaning: later (stale readers refresh their map first), the source's copy is deleted
  in small batches, under a replication origin the audit stream skips.

Abortable before the switch: unfence, drop the subscription, delete the partial copy.

A source that fails over before the switch comes back without the move's slot (it is not
one of the permanent slots its standbys keep): what the target lacks can no longer be
streamed, so the mover starts the copy again from a new snapshot (unfenced, the target's
partial copy deleted), at most MAX_COPY_RESTARTS times per run. A target that fails over
keeps its subscription (a catalog row, replicated like any other) and goes on from where
its synchronous standby had applied.

Ownership (docs/ARCHITECTURE.md, "Moves"): at every instant each bucket is owned by at most
one shard, and by exactly one outside a switch. One process at a time acts on a move (its
lease, apps.sharding.lease); each step that changes which shard serves the range checks, in
the transaction of its effect, that the state it starts from still holds:

- the fence commits only while the journal says the move is active, switching, under this
  lease (the journal row is held FOR SHARE until the source commits);
- the take-over commits on the target while the source's owner rows are locked and fenced
  for this move's epoch, and the journal row is held as above;
- an unfence commits only while the source's owner rows are locked and the target owns
  none of the range. The source's owner rows are the mutex between these two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg

from apps.common.faults import crash_point
from apps.sharding import moves
from apps.sharding.lease import MoveLease
from apps.sharding.move_checks import HASHED_ROW, balance_mismatches, differences, range_aggregates
from apps.sharding.moves import ABORTED, ABORTING, ACTIVE, DONE, Move, MoveConflict, MoveLost
from apps.sharding.placement import BUCKET_COLUMNS, FENCE_LOCK_CLASS, MOVER_ORIGIN, MOVER_SETTING, range_filter_sql
from apps.sharding.routing import refresh_shard_map, shard_map
from apps.sharding.shardmap import DatabaseServer

log = logging.getLogger(__name__)

Report = Callable[[str], None]

# Run after every switch (the transfers app drains the moved transfers in flight on their new shard).
after_switch_hooks: list[Callable[[Move], None]] = []


class MoveFailed(RuntimeError):
    """The move cannot go on; it stays in its phase (resume or abort)."""


class ReplicationLost(MoveFailed):
    """The source has no slot for the move (it failed over to a member without it): the copy starts again."""


# Restarts of the copy within one run before the move stops for an operator.
MAX_COPY_RESTARTS = 3


# The fence and the take-over wait this long, at most, for a lock held by another mover.
OWNER_LOCK_TIMEOUT = "3s"
# How often the copy's wait asks the source whether the move's slot is still there.
SLOT_CHECK_SECONDS = 2.0


def _connect(server: DatabaseServer, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    # UTC: the content hashes compare rows as text on two servers.
    return psycopg.connect(server.conninfo(options="-c TimeZone=UTC"), autocommit=autocommit)


def plan_move(first: int, last: int, target: str) -> Move:
    """Validate a request against the current map and record it (or return the active move for it)."""
    current = refresh_shard_map()
    if not 0 <= first <= last < current.bucket_count:
        raise MoveConflict(f"buckets {first}..{last} are not within 0..{current.bucket_count - 1}")
    if target not in current.shards:
        raise MoveConflict(f"unknown shard {target}: declare it and run shard_add first")
    active = moves.active_move()
    if active is not None:
        if (active.first, active.last, active.target) == (first, last, target):
            return active
        raise MoveConflict(f"move {active.id} ({active.buckets} to {active.target}) is still {active.phase}")
    owners = {current.alias_for_bucket(b) for b in range(first, last + 1)}
    if len(owners) != 1:
        raise MoveConflict(f"buckets {first}..{last} are on several shards ({sorted(owners)}): move each part")
    source = owners.pop()
    if source == target:
        raise MoveConflict(f"buckets {first}..{last} are already on {target}")
    return moves.move_create(first, last, source, target)


# Each sharded table's primary key (what the clean-up's survival check looks up on the target).
PRIMARY_KEYS = {
    "ledger_wallet": "id",
    "ledger_entry": "id",
    "ledger_movement_key": "id",
    "transfers_transfer": "id",
    "transfers_event": "id",
    "transfers_idempotency": "id",
    "transfers_payee_credit": "transfer_id",
    "holds_hold": "id",
    "refunds_refund": "id",
    "events_event": "id",
}


# Rows never updated once written: after a switch they must be equal on both shards, byte for byte.
INSERT_ONLY_TABLES = frozenset({"ledger_entry", "transfers_event", "events_event"})


def _value(conn: psycopg.Connection[Any], query: str, params: list[Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise MoveFailed(f"no row from {query!r}")
    return row[0]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Mover:
    def __init__(
        self,
        move: Move,
        *,
        report: Report = log.info,
        lag_gate_bytes: int = 4 << 20,
        switch_timeout: float = 5.0,
        cleanup_delay: float = 3.0,
        cleanup_batch: int = 2000,
    ) -> None:
        self.move = move
        self.report = report
        self.lag_gate_bytes = lag_gate_bytes
        self.switch_timeout = switch_timeout
        self.cleanup_delay = cleanup_delay
        self.cleanup_batch = cleanup_batch
        servers = shard_map().shards
        self.source = servers[move.source]
        self.target = servers[move.target]
        self.lease: MoveLease | None = None

    # -- the lease -----------------------------------------------------------------------

    @contextmanager
    def leased(self) -> Iterator[Move]:
        """Hold the move's lease for the block; the journal's row is re-read once it is held."""
        if self.lease is not None:
            yield self.move
            return
        lease = MoveLease(self.move.id)
        lease.acquire()
        self.lease = lease
        try:
            current = moves.move_get(self.move.id)
            if current is None:
                raise MoveLost(f"move {self.move.id} is gone from the journal")
            self.move = current
            yield self.move
        finally:
            lease.release()
            self.lease = None

    def _still_mine(self, *, force: bool = False) -> None:
        """Raise MoveLost once the move was ended or taken by another process (checked every ~0.5 s)."""
        if self.lease is None:
            raise MoveLost(f"move {self.move.id}: acting without its lease")
        self.lease.check(force=force)

    def _pause(self, seconds: float) -> None:
        """Sleep, still noticing within half a second that the move was taken away."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._still_mine()
            time.sleep(min(left, 0.2))

    def _waiting(self, what: str) -> None:
        """Say in the journal what the mover waits on (`move_buckets --status` shows it)."""
        if self.move.detail.get("waiting_on") != what:
            self.move.detail["waiting_on"] = what
            self._save()

    @contextmanager
    def _journal_holds(self, phase: str) -> Iterator[None]:
        """The block runs while the journal says: active, in `phase`, under this lease.

        The row is held FOR SHARE on the lease's connection until the block ends, so an
        abort or a take-over by another process cannot change it in between; a block that
        commits a shard's transaction inside commits it under that guarantee.
        """
        conn = self._lease_conn()
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT state, phase, lease_token FROM sharding_move WHERE id = %s FOR SHARE", [self.move.id]
                ).fetchone()
                if row is None or tuple(row) != (ACTIVE, phase, self.move.lease_token):
                    raise MoveLost(f"move {self.move.id} is no longer {ACTIVE}/{phase} under this process: {row}")
                yield
        except psycopg.OperationalError as exc:
            if conn.broken or conn.closed:
                raise MoveLost(f"move {self.move.id}: the lease's connection failed ({exc})") from exc
            raise  # a shard's error inside the block

    def _lease_conn(self) -> psycopg.Connection[Any]:
        if self.lease is None:
            raise MoveLost(f"move {self.move.id}: acting without its lease")
        return self.lease.conn

    # -- running -------------------------------------------------------------------------

    def run(self, *, stop_after: str | None = None) -> Move:
        """Run the remaining phases (or up to and including `stop_after`), under the move's lease."""
        with self.leased():
            try:
                return self._run(stop_after)
            except MoveFailed as exc:
                self.move.error = str(exc)
                self._save()
                raise

    def _run(self, stop_after: str | None) -> Move:
        if self.move.state == ACTIVE and self.move.phase == ABORTING:
            raise MoveConflict(f"move {self.move.id} is being aborted: run move_buckets --abort to finish it")
        steps: dict[str, tuple[Callable[[], None], str]] = {
            "copying": (self.copy, "catching_up"),
            "catching_up": (self.catch_up, "verifying"),
            "verifying": (self.verify, "switching"),
            "switching": (self.switch, "cleaning"),
            "cleaning": (self.clean_up, "done"),
        }
        restarts = 0
        while self.move.state == ACTIVE:
            self._still_mine(force=True)
            phase = self.move.phase
            crash_point(f"move_phase_{phase}")
            step, following = steps[phase]
            self.report(f"move {self.move.id} ({self.move.buckets} {self.move.source} -> {self.move.target}): {phase}")
            started = time.monotonic()
            try:
                step()
            except ReplicationLost as exc:
                restarts += 1
                if restarts > MAX_COPY_RESTARTS:
                    raise MoveFailed(f"{exc}; the copy started again {MAX_COPY_RESTARTS} times in this run") from exc
                self._restart_copy(str(exc))
                continue
            self.move.detail.setdefault("phase_seconds", {})[phase] = round(time.monotonic() - started, 3)
            self.move.phase = following
            self.move.error = ""
            self.move.detail.pop("waiting_on", None)
            if following == "done":
                self.move.state = DONE
            self._save()
            if phase == stop_after:
                break
        return self.move

    def _save(self) -> None:
        conn = self._lease_conn()
        try:
            moves.move_save(self.move, conn=conn)
        except psycopg.OperationalError as exc:
            if conn.broken or conn.closed:
                raise MoveLost(f"move {self.move.id}: the lease's connection failed ({exc})") from exc
            raise

    # -- copying and catching up ---------------------------------------------------------

    def copy(self) -> None:
        name = self.move.name
        # Created only while the journal says this process copies: a mover that lost the
        # move while stopped must not leave a publication, a slot or a subscription behind.
        with _connect(self.source) as src, _connect(self.target) as dst, self._journal_holds("copying"):
            self._start_replication(src, dst)
        with _connect(self.target) as dst:
            crash_point("move_copying")
            slot_checked = 0.0
            while True:
                self._still_mine()
                if not dst.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", [name]).fetchone():
                    raise MoveFailed(f"subscription {name} is gone from {self.move.target}")
                if time.monotonic() - slot_checked > SLOT_CHECK_SECONDS:
                    self._require_slot()
                    slot_checked = time.monotonic()
                states = dst.execute(
                    "SELECT r.srsubstate, count(*) FROM pg_subscription_rel r"
                    " JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = %s GROUP BY 1",
                    [name],
                ).fetchall()
                counts = dict(states)
                if counts and set(counts) <= {"r", "s"}:
                    break
                self.move.detail["copy_tables"] = {k: int(v) for k, v in counts.items()}
                ready = sum(int(v) for k, v in counts.items() if k in ("r", "s"))
                self._waiting(f"the initial copy: {ready} of {sum(counts.values())} tables synchronized")
                time.sleep(0.2)
        self.move.detail["rows_copied"] = self._range_rows(self.target)

    def _start_replication(self, src: psycopg.Connection[Any], dst: psycopg.Connection[Any]) -> None:
        """The range's publication on the source and its subscription on the target (once each)."""
        name = self.move.name
        if not src.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [name]).fetchone():
            tables = ", ".join(
                f"{t} WHERE ({range_filter_sql(t, self.move.first, self.move.last)})" for t in BUCKET_COLUMNS
            )
            # No TRUNCATE: row filters do not apply to it (it would empty the target's other ranges).
            src.execute(f"CREATE PUBLICATION {name} FOR TABLE {tables} WITH (publish = 'insert, update, delete')")
        if dst.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", [name]).fetchone():
            return
        # A slot left by an attempt that died before its subscription existed.
        src.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
            [name],
        )
        removed = self._delete_range(dst, "target")  # a partial copy of an earlier attempt
        if removed:
            self.report(f"  removed {removed} rows of an earlier attempt from {self.move.target}")
        dst.execute(
            f"CREATE SUBSCRIPTION {name} CONNECTION {_literal(self.source.conninfo())} PUBLICATION {name}"
            f" WITH (copy_data = true, slot_name = '{name}', synchronous_commit = 'on')"
        )

    def _require_slot(self) -> None:
        """Raise ReplicationLost if the source (its primary now) has no slot for the move."""
        with _connect(self.source) as src:
            found = src.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [self.move.name]).fetchone()
        if found is None:
            raise ReplicationLost(
                f"replication slot {self.move.name} is gone from {self.move.source} (a failover to a member"
                " without it, or dropped)"
            )

    def _restart_copy(self, reason: str) -> None:
        """Back to a new copy: the source serves the range again, the replication and the target's
        partial copy go, the journal says why. Only before the switch: a target that took over
        makes `_unfence` refuse (MoveConflict), and the move is then finished instead."""
        self.report(f"  {reason}: the copy starts again")
        if self.move.epoch is not None:
            self._unfence()
        self._drop_replication()
        self.move.detail["rows_removed_from_target"] = self._clear_target()
        restart = {"at": time.time(), "from": self.move.phase, "reason": reason}
        self.move.detail.setdefault("copy_restarts", []).append(restart)
        self.move.phase = "copying"
        self.move.error = ""
        self._save()

    def lag_bytes(self) -> int | None:
        """How far the target's applied position trails the source's WAL (None: no slot)."""
        with _connect(self.source) as src:
            row = src.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                [self.move.name],
            ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def catch_up(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._still_mine()
            lag = self.lag_bytes()
            self.move.detail["lag_bytes"] = lag
            if lag is not None and lag <= self.lag_gate_bytes:
                return
            if lag is None:
                self._require_slot()
            if time.monotonic() > deadline:
                raise MoveFailed(f"replication lag still {lag} bytes after {timeout:.0f} s")
            self._waiting(f"replication lag above {self.lag_gate_bytes} bytes")
            time.sleep(0.2)

    # -- verifying -----------------------------------------------------------------------

    def verify(self, rounds: int = 2) -> None:
        self._require_slot()  # without it the target falls behind for good: differences would only mislead
        with _connect(self.target) as dst:
            broken = balance_mismatches(dst, self.move.first, self.move.last)
        if broken:
            raise MoveFailed("the copy's balances do not match its entries: " + "; ".join(broken[:5]))
        found: list[str] = []
        for _ in range(rounds):
            self._still_mine()
            found = self._compare()
            if not found:
                break
            self._pause(0.3)  # rows written since the last round are still streaming
        self.move.detail["verify_differences_under_traffic"] = len(found)
        if found:
            self.report(f"  {len(found)} bucket tables still differ under traffic; the switch compares exactly")

    def _compare(self) -> list[str]:
        def read(server: DatabaseServer) -> Any:
            with _connect(server) as conn:
                return range_aggregates(conn, self.move.first, self.move.last)

        with ThreadPoolExecutor(2) as pool:
            source, target = pool.map(read, [self.source, self.target])
        return differences(source, target)

    # -- switching -----------------------------------------------------------------------

    def _owner_states(self, server: DatabaseServer) -> dict[str, int]:
        with _connect(server) as conn:
            rows = conn.execute(
                "SELECT state || ':' || epoch, count(*) FROM sharding_bucket_owner"
                " WHERE bucket BETWEEN %s AND %s GROUP BY 1",
                [self.move.first, self.move.last],
            ).fetchall()
        return {k: int(n) for k, n in rows}

    @property
    def _size(self) -> int:
        return self.move.last - self.move.first + 1

    def _target_owns_range(self) -> bool:
        return self.move.epoch is not None and self._owner_states(self.target) == {
            f"owned:{self.move.epoch}": self._size
        }

    def switch(self) -> None:
        if self._target_owns_range():
            self._switch_map()  # killed after the target took over: finish the map's side
            return
        for attempt in range(1, 4):
            lag = self.lag_bytes()
            if lag is None or lag > self.lag_gate_bytes:
                self.catch_up()
            previous_epoch = self._allocate_epoch()
            started = time.monotonic()
            self.move.detail["switch_started_at"] = time.time()
            self._waiting("the fence on the source (writes in flight on the range)")
            fence_lsn = self._fence(previous_epoch)
            crash_point("move_after_fence")
            pinned = None
            try:
                self._wait_applied(fence_lsn, started + self.switch_timeout)
                pinned = self._pin_target_snapshot()  # the target as the source left it
                self._take_over()
            except MoveFailed as exc:
                if pinned is not None:
                    pinned.close()
                self._unfence()
                self.report(f"  switch attempt {attempt} gave up, writes resumed on the source: {exc}")
                self.move.detail["switch_failures"] = self.move.detail.get("switch_failures", 0) + 1
                self._save()
                continue
            except BaseException:
                if pinned is not None:
                    pinned.close()
                raise
            pause = time.monotonic() - started
            self.move.detail["pause_seconds"] = round(pause, 3)
            self.report(f"  switched at epoch {self.move.epoch}: writes to the range paused {pause * 1000:.0f} ms")
            crash_point("move_after_own")
            try:
                self._switch_map()
                self._verify_switch(pinned)
            finally:
                pinned.close()
            return
        raise MoveFailed("the switch gave up three times (see the move's detail); writes run on the source")

    def _allocate_epoch(self) -> int | None:
        """A new epoch for this attempt, taken from the map's counter where it takes effect.

        Every attempt gets its own (a resumed or retried switch never reuses one, and
        `shard_add`, which bumps the same row, can never produce the same number). Returns
        the epoch of the previous attempt, whose fence this attempt takes over.
        """
        conn = self._lease_conn()
        previous = self.move.epoch
        with self._journal_holds("switching"):
            row = conn.execute(
                "UPDATE sharding_map_state SET epoch = epoch + 1, changed_at = now() WHERE id = 1 RETURNING epoch"
            ).fetchone()
            if row is None:
                raise MoveFailed("the control database has no shard map")
            self.move.epoch = int(row[0])
            self._save()
        return previous

    def _lock_owner_rows(self, conn: psycopg.Connection[Any], mode: str) -> dict[int, tuple[str, int]]:
        """Lock the range's owner rows on one shard (inside the caller's transaction)."""
        conn.execute(f"SET LOCAL lock_timeout = '{OWNER_LOCK_TIMEOUT}'")
        try:
            rows = conn.execute(
                f"SELECT bucket, state, epoch FROM sharding_bucket_owner WHERE bucket BETWEEN %s AND %s FOR {mode}",  # noqa: S608
                [self.move.first, self.move.last],
            ).fetchall()
        except psycopg.errors.LockNotAvailable as exc:
            raise MoveFailed("the range's owner rows are locked by another process (a mover in its switch?)") from exc
        return {bucket: (state, epoch) for bucket, state, epoch in rows}

    def _fence(self, previous_epoch: int | None) -> str:
        """Fence the range on the source: waits for its writes in flight, refuses any later one.

        Only from 'owned', or from this move's own fence of an earlier attempt (re-tagged
        with this attempt's epoch), and only while the journal says the move is switching.
        """
        epoch, first, last = self.move.epoch, self.move.first, self.move.last
        with _connect(self.source) as src:
            for _ in range(20):
                try:
                    with self._journal_holds("switching"), src.transaction():
                        src.execute("SET LOCAL lock_timeout = '500ms'")
                        src.execute(
                            "SELECT pg_advisory_xact_lock(%s, b) FROM generate_series(%s::int, %s::int) b ORDER BY b",
                            [FENCE_LOCK_CLASS, first, last],
                        )
                        src.execute(
                            "UPDATE sharding_bucket_owner SET state = 'fenced', epoch = %s, changed_at = now()"
                            " WHERE bucket BETWEEN %s AND %s"
                            " AND (state = 'owned' OR (state = 'fenced' AND epoch = %s))",
                            [epoch, first, last, previous_epoch],
                        )
                        fenced = _value(
                            src,
                            "SELECT count(*) FROM sharding_bucket_owner"
                            " WHERE bucket BETWEEN %s AND %s AND state = 'fenced' AND epoch = %s",
                            [first, last, epoch],
                        )
                        if fenced != self._size:  # rolled back: the source does not serve the whole range
                            raise MoveFailed(f"the source serves {fenced} of the {self._size} buckets: not fenced")
                        self._marker(src, "fence")
                    break
                except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                    self._still_mine()
                    continue  # writes kept the locks: let them through, try again
            else:
                raise MoveFailed("could not fence the range: its locks stayed busy")
            lsn = str(_value(src, "SELECT pg_current_wal_lsn()::text"))
        self.move.detail["fence_lsn"] = lsn
        return lsn

    def _marker(self, conn: psycopg.Connection[Any], kind: str) -> None:
        m = self.move
        conn.execute(
            "INSERT INTO sharding_move_marker (move_id, kind, first_bucket, last_bucket, source, target, epoch)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [m.id, kind, m.first, m.last, m.source, m.target, m.epoch],
        )

    def _wait_applied(self, fence_lsn: str, deadline: float) -> None:
        with _connect(self.source) as src:
            while True:
                row = src.execute(
                    "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                    [fence_lsn, self.move.name],
                ).fetchone()
                if row is None:
                    raise MoveFailed(f"replication slot {self.move.name} is gone")
                if row[0]:
                    break
                if time.monotonic() > deadline:
                    raise MoveFailed(f"the target did not reach the fence's WAL position {fence_lsn} in time")
                self._still_mine()
                time.sleep(0.01)

    def _pin_target_snapshot(self) -> psycopg.Connection[Any]:
        """A read-only snapshot of the target taken while the range is fenced and fully applied."""
        conn = _connect(self.target, autocommit=False)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        conn.execute("SELECT 1")  # the snapshot is taken at the first statement
        return conn

    def _verify_switch(self, pinned: psycopg.Connection[Any]) -> None:
        """Source (frozen for the range) against the target as it was at the switch: equal or loud.

        Run once writes go to the target again, so its cost is not part of the pause. A
        difference keeps the source's copy (no clean-up) and stops the move with an error.
        """
        with _connect(self.source) as src:
            source = range_aggregates(src, self.move.first, self.move.last)
        target = range_aggregates(pinned, self.move.first, self.move.last, own_snapshot=False)
        found = differences(source, target)
        self.move.detail["verified_at_switch"] = not found
        if found:
            self.move.detail["switch_differences"] = found[:20]
            self._save()
            raise MoveFailed("the target differed from the fenced source at the switch: " + "; ".join(found[:3]))
        self._save()

    def _take_over(self) -> None:
        """The target owns the range: only while the source is fenced for this very attempt.

        The source's owner rows stay locked until the target has committed, so no unfence
        can slip in between the check and the effect (an unfence takes the same locks, then
        looks at the target).
        """
        epoch = self.move.epoch
        with _connect(self.source) as src, src.transaction():
            states = self._lock_owner_rows(src, "UPDATE")
            if len(states) != self._size or any(s != ("fenced", epoch) for s in states.values()):
                raise MoveFailed(f"the source is no longer fenced for epoch {epoch}: no take-over")
            with _connect(self.target) as dst, self._journal_holds("switching"), dst.transaction():
                dst.execute(
                    "INSERT INTO sharding_bucket_owner (bucket, state, epoch)"
                    " SELECT b, 'owned', %s FROM generate_series(%s::int, %s::int) b"
                    " ON CONFLICT (bucket) DO UPDATE SET state = 'owned', epoch = EXCLUDED.epoch, changed_at = now()",
                    [epoch, self.move.first, self.move.last],
                )
                self._marker(dst, "own")

    def _unfence(self) -> None:
        """Give the range back to the source: only while the target owns none of it."""
        with _connect(self.source) as src, src.transaction():
            states = self._lock_owner_rows(src, "UPDATE")
            if not any(s == ("fenced", self.move.epoch) for s in states.values()):
                return
            with _connect(self.target) as dst:
                owned_by_target = _value(
                    dst,
                    "SELECT count(*) FROM sharding_bucket_owner WHERE bucket BETWEEN %s AND %s AND state = 'owned'",
                    [self.move.first, self.move.last],
                )
            if owned_by_target:
                raise MoveConflict(
                    f"move {self.move.id}: {self.move.target} owns {owned_by_target} bucket(s) of the range:"
                    " the move has switched, the source stays fenced (run move_buckets --resume to finish it)"
                )
            src.execute(
                "UPDATE sharding_bucket_owner SET state = 'owned', changed_at = now()"
                " WHERE bucket BETWEEN %s AND %s AND state = 'fenced' AND epoch = %s",
                [self.move.first, self.move.last, self.move.epoch],
            )
            self._marker(src, "unfence")

    def _switch_map(self) -> None:
        """The control database's map follows the shards: the range is the target's, at a new epoch."""
        if not self._target_owns_range():
            raise MoveFailed(f"{self.move.target} does not own the range at epoch {self.move.epoch}: map unchanged")
        conn = self._lease_conn()
        with self._journal_holds("switching"):
            conn.execute(
                "UPDATE sharding_bucket_assignment SET alias = %s WHERE bucket BETWEEN %s AND %s",
                [self.move.target, self.move.first, self.move.last],
            )
            map_epoch = _value(
                conn, "UPDATE sharding_map_state SET epoch = epoch + 1, changed_at = now() WHERE id = 1 RETURNING epoch"
            )
            self.move.phase = "cleaning"
            self.move.detail.pop("waiting_on", None)  # the switch's wait is over
            self.move.detail["switched_at"] = time.time()
            self.move.detail["map_epoch"] = int(map_epoch)
            self._save()
        refresh_shard_map()
        self._drop_replication()
        for hook in after_switch_hooks:
            try:
                hook(self.move)
            except Exception:  # a hook is a speed-up (the sweeper covers it): never fail the move
                log.exception("after-switch hook failed")

    def _drop_replication(self) -> None:
        name = self.move.name
        with _connect(self.target) as dst:
            if dst.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", [name]).fetchone():
                dst.execute(f"ALTER SUBSCRIPTION {name} DISABLE")
                dst.execute(f"ALTER SUBSCRIPTION {name} SET (slot_name = NONE)")
                dst.execute(f"DROP SUBSCRIPTION {name}")
        with _connect(self.source) as src:
            for _ in range(100):
                row = src.execute(
                    "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = %s", [name]
                ).fetchone()
                if row is None:
                    break
                if not row[0]:
                    src.execute("SELECT pg_drop_replication_slot(%s)", [name])
                    break
                self._still_mine()
                self._waiting(f"the WAL sender of slot {name} (pid {row[1]}) to exit")
                time.sleep(0.1)  # the disabled subscription's sender is still exiting
            else:
                # The sender of a subscription that no longer exists: end it, then drop its slot.
                src.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s AND active",
                    [name],
                )
                time.sleep(0.5)
                if src.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [name]).fetchone():
                    src.execute("SELECT pg_drop_replication_slot(%s)", [name])
            src.execute(f"DROP PUBLICATION IF EXISTS {name}")

    # -- cleaning up ---------------------------------------------------------------------

    def clean_up(self) -> None:
        self._drop_replication()
        verified = self.move.detail.get("verified_at_switch")
        if verified is False:
            raise MoveFailed("the switch's verification found differences: the source's copy is kept")
        if verified is None:  # killed between the switch and its verification
            self._check_rows_survive()
        owners = shard_map()
        if any(owners.alias_for_bucket(b) != self.move.target for b in (self.move.first, self.move.last)):
            raise MoveFailed("the map does not give the range to the target: nothing is deleted")
        switched_at = float(self.move.detail.get("switched_at", 0))
        wait = switched_at + self.cleanup_delay - time.time()
        if wait > 0:
            self._waiting("the clean-up delay (every process re-reads the map first)")
            self._pause(wait)  # every process has re-read the map before its old rows go
        states = self._owner_states(self.source)
        if any(not key.startswith(("fenced:", "moved:")) for key in states):
            raise MoveFailed(f"the source still serves part of the range ({states}): nothing is deleted")
        with _connect(self.source) as src:
            self.move.detail["rows_cleaned"] = self._delete_range(src, "source")
        self._mark_source_moved()

    def _mark_source_moved(self) -> None:
        """The source's copy is gone: its buckets are no longer fenced (TRUNCATE and the alarms ignore them)."""
        with _connect(self.source) as src, self._journal_holds(self.move.phase), src.transaction():
            src.execute(
                "UPDATE sharding_bucket_owner SET state = 'moved', changed_at = now()"
                " WHERE bucket BETWEEN %s AND %s AND state = 'fenced' AND epoch = %s",
                [self.move.first, self.move.last, self.move.epoch],
            )

    def _check_rows_survive(self, batch: int = 5000) -> None:
        """Every row of the range on the source exists, equal, on the target (by primary key and content)."""
        with _connect(self.source) as src, _connect(self.target) as dst:
            for table, key in PRIMARY_KEYS.items():
                where = range_filter_sql(table, self.move.first, self.move.last)
                content = HASHED_ROW.get(table, "t")
                rows = src.execute(f"SELECT {key}, md5({content}::text) FROM {table} t WHERE {where}").fetchall()  # noqa: S608
                for start in range(0, len(rows), batch):
                    self._still_mine()
                    chunk = dict(rows[start : start + batch])
                    found = dict(
                        dst.execute(
                            f"SELECT {key}, md5({content}::text) FROM {table} t WHERE {key} = ANY(%s)",  # noqa: S608
                            [list(chunk)],
                        ).fetchall()
                    )
                    missing = [k for k in chunk if k not in found]
                    if missing:
                        raise MoveFailed(f"{len(missing)} row(s) of {table} are on the source only, e.g. {missing[0]}")
                    changed = [k for k, digest in chunk.items() if found[k] != digest]
                    if changed and table in INSERT_ONLY_TABLES:
                        raise MoveFailed(f"{len(changed)} row(s) of {table} differ on the target, e.g. {changed[0]}")
                    if changed:  # updated on the target since the switch (a balance, a status)
                        counts = self.move.detail.setdefault("rows_changed_since_switch", {})
                        counts[table] = counts.get(table, 0) + len(changed)
        with _connect(self.target) as dst:
            broken = balance_mismatches(dst, self.move.first, self.move.last)
        if broken:
            raise MoveFailed("the target's balances do not match its entries: " + "; ".join(broken[:3]))
        self.move.detail["verified_rows_survive"] = True

    def _delete_range(self, conn: psycopg.Connection[Any], side: str) -> int:
        """Delete the range's rows in small transactions, unseen by the audit stream.

        Never on a shard that serves any bucket of the range: each batch locks the range's
        owner rows and looks first, so no take-over on that shard can commit in between.
        """
        conn.execute(f"SET {MOVER_SETTING} = 'on'")
        conn.execute(
            "SELECT pg_replication_origin_create(%s) WHERE NOT EXISTS"
            " (SELECT 1 FROM pg_replication_origin WHERE roname = %s)",
            [MOVER_ORIGIN, MOVER_ORIGIN],
        )
        if not _value(conn, "SELECT pg_replication_origin_session_is_setup()"):
            conn.execute("SELECT pg_replication_origin_session_setup(%s)", [MOVER_ORIGIN])
        total = 0
        try:
            for table in reversed(list(BUCKET_COLUMNS)):
                where = range_filter_sql(table, self.move.first, self.move.last)
                while True:
                    self._still_mine()
                    with conn.transaction():
                        states = self._lock_owner_rows(conn, "SHARE")
                        served = sum(1 for state, _ in states.values() if state == "owned")
                        if served:
                            raise MoveFailed(
                                f"the {side} serves {served} bucket(s) of the range: its rows are not deleted"
                            )
                        deleted = conn.execute(
                            f"DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE {where}"  # noqa: S608
                            f" LIMIT %s))",
                            [self.cleanup_batch],
                        ).rowcount
                    total += deleted
                    if deleted:
                        crash_point(f"move_cleaning_{side}")
                    if deleted < self.cleanup_batch:
                        break
        finally:
            conn.execute("SELECT pg_replication_origin_session_reset()")
            conn.execute(f"RESET {MOVER_SETTING}")
        return total

    def _clear_target(self) -> int:
        """Delete the target's copy of the range (its replication dropped first); rows removed."""
        removed = 0
        with _connect(self.target) as dst:
            for _ in range(10):  # until nothing is left: a table-sync worker may still be exiting
                removed += self._delete_range(dst, "target")
                if not self._range_rows(self.target):
                    return removed
                self._pause(0.2)
        raise MoveFailed(f"rows of the range keep appearing on {self.move.target}")

    def _range_rows(self, server: DatabaseServer) -> int:
        with _connect(server) as conn:
            where = {t: range_filter_sql(t, self.move.first, self.move.last) for t in BUCKET_COLUMNS}
            return sum(int(_value(conn, f"SELECT count(*) FROM {t} WHERE {where[t]}")) for t in BUCKET_COLUMNS)  # noqa: S608

    def finish_keeping_source(self) -> Move:
        """End a switched move without its clean-up (an operator's decision after a failed check).

        The source keeps its copy, never served, never written; a later move of the range
        back replaces it.
        """
        with self.leased():
            if self.move.state != ACTIVE or self.move.phase != "cleaning":
                raise MoveConflict(f"move {self.move.id} is {self.move.state}/{self.move.phase}, not switched")
            self._mark_source_moved()
            self.move.state, self.move.phase = DONE, "done"
            self.move.detail["source_kept"] = True
            self.move.detail.pop("waiting_on", None)
            self._save()
            return self.move

    # -- aborting ------------------------------------------------------------------------

    def abort(self) -> Move:
        """Undo the move before its switch: the source serves the range again, the target's copy goes."""
        with self.leased():
            if self.move.state != ACTIVE:
                raise MoveConflict(f"move {self.move.id} is {self.move.state}")
            if self.move.phase == "cleaning" or self._target_owns_range():
                raise MoveConflict(f"move {self.move.id} has switched: run it to the end (or move the range back)")
            resumed_phase = self.move.phase
            # From here no take-over can start (each checks the journal's phase in its own transaction).
            self.move.phase = ABORTING
            self.move.detail.setdefault("aborted_from", resumed_phase)
            self._save()
            crash_point("move_aborting")
            if self.move.epoch is not None:
                try:
                    self._unfence()
                except MoveConflict:
                    # A take-over that checked the journal before the abort committed first:
                    # the move switched; it can only be finished.
                    self.move.phase = "switching"
                    self._save()
                    raise
            self._drop_replication()
            removed = self._clear_target()
            self.move.state = ABORTED
            self.move.phase = self.move.detail["aborted_from"]  # the journal keeps where it was undone
            self.move.detail["rows_removed_from_target"] = removed
            self.move.detail.pop("waiting_on", None)
            self._save()
            return self.move
