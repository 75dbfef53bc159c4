"""One process at a time acts on a move: a lease that dies with the process that holds it.

The lease is a session advisory lock on the control database, held on a connection of its
own for as long as the mover runs. A process that dies (killed, crashed, its host gone)
loses its connection and with it the lease; a process merely stopped (SIGSTOP) keeps it,
and a second `move_buckets --resume` or `--abort` is refused, naming the holder.

Taking the lease also bumps the move's `lease_token`. Every write the mover makes to the
journal and every step that changes which shard serves the range checks the token in the
same transaction, so a holder whose lease was taken from it (`--evict`, a lost connection)
can no longer change anything when it wakes up: it finds out and exits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from apps.sharding.moves import MoveLost
from apps.sharding.routing import shard_map

# Advisory lock class of a move's lease (the move's id is the second key).
LEASE_LOCK_CLASS = 21336
APPLICATION_PREFIX = "shardwallet-mover"
# How often a mover re-checks, at most, that the move is still its own.
CHECK_INTERVAL_SECONDS = 0.5


class MoveBusy(RuntimeError):
    """Another live process holds the move's lease."""


__all__ = ["LeaseHolder", "MoveBusy", "MoveLease", "MoveLost", "evict", "lease_holder"]


@dataclass(frozen=True)
class LeaseHolder:
    """The process holding a move's lease, as the control database sees its connection."""

    backend_pid: int
    host: str
    pid: int | None
    since: datetime
    client_addr: str | None

    @property
    def process_state(self) -> str:
        """'running', 'stopped' (SIGSTOP or a debugger) or 'unknown' (another host)."""
        if self.pid is None or self.host != socket.gethostname():
            return "unknown"
        state = kernel_state(self.pid)
        if not state:
            return "unknown"
        return "stopped" if state in ("T", "t") else "running"

    def describe(self) -> str:
        where = f"pid {self.pid} on {self.host}" if self.pid else f"a process at {self.client_addr or 'local socket'}"
        state = self.process_state
        alive = "" if state == "unknown" else f", {state}"
        return f"{where} (since {self.since:%Y-%m-%d %H:%M:%S %Z}{alive})"


def kernel_state(pid: int) -> str:
    """A local process's one-letter state as the kernel reports it ('T': stopped), '' when gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _application_name() -> str:
    return f"{APPLICATION_PREFIX} {os.getpid()}@{socket.gethostname()}"[:63]


def _holder_from(application_name: str) -> tuple[int | None, str]:
    ident = application_name[len(APPLICATION_PREFIX) :].strip()
    pid, _, host = ident.partition("@")
    return (int(pid) if pid.isdigit() else None), host


HOLDER_SQL = """
SELECT a.pid, a.application_name, a.backend_start, host(a.client_addr)
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 2
"""


def lease_holder(move_id: int, conn: psycopg.Connection[Any] | None = None) -> LeaseHolder | None:
    """Who holds the move's lease now (None: nobody; a mover would take it)."""

    def read(c: psycopg.Connection[Any]) -> LeaseHolder | None:
        row = c.execute(HOLDER_SQL, [LEASE_LOCK_CLASS, move_id]).fetchone()
        if row is None:
            return None
        pid, host = _holder_from(row[1] or "")
        return LeaseHolder(backend_pid=row[0], host=host, pid=pid, since=row[2], client_addr=row[3])

    if conn is not None:
        return read(conn)
    with psycopg.connect(shard_map().control.conninfo(), autocommit=True) as own:
        return read(own)


def evict(move_id: int) -> LeaseHolder | None:
    """End the holder's lease by closing its control connection (the holder exits when it notices)."""
    with psycopg.connect(shard_map().control.conninfo(), autocommit=True) as conn:
        holder = lease_holder(move_id, conn)
        if holder is not None:
            conn.execute("SELECT pg_terminate_backend(%s)", [holder.backend_pid])
        return holder


class MoveLease:
    """The right to act on one move, for as long as this object's connection lives."""

    def __init__(self, move_id: int) -> None:
        self.move_id = move_id
        self.token: int | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._checked_at = float("-inf")

    def acquire(self) -> int:
        conn = psycopg.connect(shard_map().control.conninfo(application_name=_application_name()), autocommit=True)
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", [LEASE_LOCK_CLASS, self.move_id]).fetchone()
            if not (row and row[0]):
                holder = lease_holder(self.move_id, conn)
                who = holder.describe() if holder else "another process (it just let go: try again)"
                raise MoveBusy(
                    f"move {self.move_id} is being run by {who}: wait for it, or stop that process"
                    " (`move_buckets --status` tells whether it is alive and what it waits on)"
                )
            bumped = conn.execute(
                "UPDATE sharding_move SET lease_token = lease_token + 1,"
                " lease_holder = %s, lease_since = now() WHERE id = %s RETURNING lease_token",
                [_application_name(), self.move_id],
            ).fetchone()
            if bumped is None:
                raise MoveLost(f"move {self.move_id} does not exist")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.token = int(bumped[0])
        self._checked_at = time.monotonic()
        return self.token

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise MoveLost(f"move {self.move_id}: no lease held")
        return self._conn

    def check(self, *, force: bool = False) -> None:
        """Raise MoveLost when the move is no longer this holder's (at most every half second)."""
        if not force and time.monotonic() - self._checked_at < CHECK_INTERVAL_SECONDS:
            return
        try:
            row = self.conn.execute(
                "SELECT state, phase, lease_token FROM sharding_move WHERE id = %s", [self.move_id]
            ).fetchone()
        except psycopg.Error as exc:
            raise MoveLost(f"move {self.move_id}: lease lost with the control database connection ({exc})") from exc
        self._checked_at = time.monotonic()
        if row is None:
            raise MoveLost(f"move {self.move_id} is gone from the journal")
        state, _phase, token = row
        if token != self.token:
            raise MoveLost(f"move {self.move_id} was taken over by another process")
        if state != "active":
            raise MoveLost(f"move {self.move_id} is {state}")

    def release(self) -> None:
        if self._conn is not None:
            try:
                # Unlocked before the close: the server ends a closed session's backend (and its
                # locks) a moment later, and an operator's next command must find the lease free.
                with contextlib.suppress(psycopg.Error):
                    self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", [LEASE_LOCK_CLASS, self.move_id])
                self._conn.close()  # closing the session releases the advisory lock in any case
            finally:
                self._conn = None
