"""The move journal on the control database: one row per bucket move, its phase and findings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connections

PHASES = ("copying", "catching_up", "verifying", "switching", "cleaning", "done")
# The phase of a move being undone: no take-over may start, `--abort` finishes it.
ABORTING = "aborting"
ACTIVE, DONE, ABORTED = "active", "done", "aborted"

_COLUMNS = (
    "id, first_bucket, last_bucket, source, target, epoch, phase, state, detail, error, started_at, updated_at,"
    " finished_at, lease_token, lease_holder, lease_since"
)


_INSERT = (  # noqa: S608 (fixed column list)
    "INSERT INTO sharding_move (first_bucket, last_bucket, source, target, phase, state)"
    " VALUES (%s, %s, %s, %s, 'copying', 'active') RETURNING "
) + _COLUMNS


class MoveConflict(RuntimeError):
    """Another move is active, or the request does not fit the map."""


class MoveLost(RuntimeError):
    """The move is no longer this process's to act on: aborted, finished or taken over."""


@dataclass
class Move:
    id: int
    first: int
    last: int
    source: str
    target: str
    epoch: int | None
    phase: str
    state: str
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    started_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    lease_token: int = 0  # bumped by each process that takes the move's lease
    lease_holder: str = ""  # the last holder's application name (pid@host)
    lease_since: datetime | None = None

    @property
    def name(self) -> str:
        """Name of its publication, subscription and replication slot."""
        return f"shardwallet_move_{self.id}"

    @property
    def buckets(self) -> str:
        return f"{self.first}..{self.last}"


def _move(row: tuple[Any, ...]) -> Move:
    detail = row[8] if isinstance(row[8], dict) else json.loads(row[8] or "{}")
    return Move(
        id=row[0], first=row[1], last=row[2], source=row[3], target=row[4], epoch=row[5], phase=row[6],
        state=row[7], detail=detail, error=row[9], started_at=row[10], updated_at=row[11], finished_at=row[12],
        lease_token=row[13], lease_holder=row[14], lease_since=row[15],
    )  # fmt: skip


def _cursor() -> Any:
    return connections["default"].cursor()


def move_create(first: int, last: int, source: str, target: str) -> Move:
    try:
        with _cursor() as cursor:
            cursor.execute(_INSERT, [first, last, source, target])
            return _move(cursor.fetchone())
    except IntegrityError as exc:
        raise MoveConflict(f"another move is active (see move_buckets --status): {exc}") from exc


def move_get(move_id: int) -> Move | None:
    with _cursor() as cursor:
        cursor.execute(f"SELECT {_COLUMNS} FROM sharding_move WHERE id = %s", [move_id])  # noqa: S608
        row = cursor.fetchone()
    return _move(row) if row else None


def active_move() -> Move | None:
    with _cursor() as cursor:
        cursor.execute(f"SELECT {_COLUMNS} FROM sharding_move WHERE state = 'active'")  # noqa: S608
        row = cursor.fetchone()
    return _move(row) if row else None


def moves_recent(limit: int = 20) -> list[Move]:
    with _cursor() as cursor:
        cursor.execute(f"SELECT {_COLUMNS} FROM sharding_move ORDER BY id DESC LIMIT %s", [limit])  # noqa: S608
        return [_move(row) for row in cursor.fetchall()]


def move_save(move: Move, conn: Any = None) -> None:
    """Write the move's journal row, only while the move is still active under this holder's lease.

    `conn`: a psycopg connection to the control database (the mover's lease connection);
    Django's default connection otherwise.
    """
    sql = (
        "UPDATE sharding_move SET phase = %s, state = %s, epoch = %s, detail = %s, error = %s,"
        " updated_at = now(), finished_at = CASE WHEN %s <> 'active' THEN now() END"
        " WHERE id = %s AND lease_token = %s AND state = 'active'"
    )
    values = [move.phase, move.state, move.epoch, json.dumps(move.detail), move.error, move.state, move.id,
              move.lease_token]  # fmt: skip
    if conn is not None:
        saved = conn.execute(sql, values).rowcount
    else:
        with _cursor() as cursor:
            cursor.execute(sql, values)
            saved = cursor.rowcount
    if saved != 1:
        raise MoveLost(f"move {move.id} was ended or taken over by another process: not saved")


def buckets_ever_moved() -> set[int]:
    """Buckets that some finished move has switched to another shard."""
    with _cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT b FROM sharding_move, generate_series(first_bucket, last_bucket) b WHERE state = 'done'"
        )
        return {row[0] for row in cursor.fetchall()}


@dataclass(frozen=True)
class MoveView:
    """A move as the operations page and /metrics show it."""

    move: Move
    lag_bytes: int | None  # replication lag while it copies or catches up

    @property
    def pause_ms(self) -> int | None:
        pause = self.move.detail.get("pause_seconds")
        return None if pause is None else round(pause * 1000)


def move_overview(limit: int = 10) -> list[MoveView]:
    from apps.sharding.mover import Mover  # the mover reads shards; this module only the control database

    views = []
    for move in moves_recent(limit):
        lag = None
        if move.state == ACTIVE and move.phase in ("copying", "catching_up", "verifying", "switching"):
            try:
                lag = Mover(move).lag_bytes()
            except Exception:  # a shard down: the page still shows the move
                lag = None
        views.append(MoveView(move, lag))
    return views
