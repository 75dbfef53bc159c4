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

from django.db import DatabaseError

from apps.sharding.placement import FENCE_SQLSTATE
from apps.sharding.routing import one_map, refresh_shard_map

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
