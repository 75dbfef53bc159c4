"""A write refused by a shard's fence: the bucket moved (or is moving). Reload the map, retry.

The refusal rolls the whole transaction back, so running the same step again on the
owner is exactly a retry: every write path is idempotent by key or by guarded SQL.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import DatabaseError, connections

from apps.sharding.placement import FENCE_SQLSTATE
from apps.sharding.routing import alias_for_id, one_map, refresh_shard_map

log = logging.getLogger(__name__)

T = TypeVar("T")


class NotServedHere(DatabaseError):
    """A row was not found on a shard that does not serve its bucket: not an answer, a stale map.

    A database error carrying the fence's SQLSTATE, so that every caller treats it exactly like
    a refused write (drains hand their transfers over, steps and requests retry on the owner).
    """

    sqlstate = FENCE_SQLSTATE


NOT_SERVED_SQL = "SELECT id FROM unnest(%s::uuid[]) AS id WHERE NOT sharding_serves(id)"


def check_missing_are_served(cursor: Any, missing: list[uuid.UUID]) -> None:
    """Rows looked up by id and not found: trust the "not found" only where the shard serves them."""
    if not missing:
        return
    cursor.execute(NOT_SERVED_SQL, [missing])
    elsewhere = [row[0] for row in cursor.fetchall()]
    if elsewhere:
        raise NotServedHere(f"{len(elsewhere)} id(s) belong to buckets this shard does not serve, e.g. {elsewhere[0]}")


class BucketsMoving(Exception):
    """The buckets stayed fenced longer than the caller waits: a move's switch is under way."""


def is_fence_refusal(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if getattr(exc, "sqlstate", None) == FENCE_SQLSTATE:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def retry_while_fenced(step: Callable[[], T], *, wait_seconds: float) -> T:
    """Run `step`; while a shard refuses it for a moving bucket, reload the map and run it again.

    A move pauses a range's writes for its switch only (about a second); a write waiting
    here then lands on the new owner. After `wait_seconds` it raises BucketsMoving.
    """
    deadline = time.monotonic() + wait_seconds
    delay = 0.02
    while True:
        try:
            with one_map():  # each run decides from one reading of the map
                return step()
        except Exception as exc:
            if not is_fence_refusal(exc):
                raise
            refresh_shard_map()
            if time.monotonic() + delay > deadline:
                raise BucketsMoving(str(exc).splitlines()[0]) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _served_here(alias: str, row_id: uuid.UUID) -> bool:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT sharding_serves(%s)", [row_id])
        row = cursor.fetchone()
    return bool(row and row[0])


def read_by_id(row_id: uuid.UUID, read: Callable[[str], T | None]) -> T | None:
    """`read(alias)` on the row's shard, trusting only a shard that serves the row's bucket.

    `read` must return only rows its shard serves (`sharding_serves(id)` in its query), so
    a frozen copy a move left behind is never an answer. Found nothing: a "not found" is
    trusted where the shard serves the bucket; elsewhere the map is re-read and the owner
    asked. Still no owner (a switch under way, or a map that cannot be refreshed while the
    range moved): NotServedHere, which the API answers as 503 `shard_moving` after waiting.
    """
    for _ in range(2):
        alias = alias_for_id(row_id)
        found = read(alias)
        if found is not None:
            return found
        if _served_here(alias, row_id):
            return None
        refresh_shard_map()
    raise NotServedHere(f"{row_id}: no shard of this process's map serves its bucket now")
