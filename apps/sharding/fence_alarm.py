"""Fences that strand a range: fenced on the shard the map still names, for too long, with no mover.

Between a source's fence and the map's switch, nobody writes the range: a mover that died or
hangs there leaves it so until an operator acts. /health, /metrics and the operations page
show it with the command that ends it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from django.conf import settings

from apps.sharding import moves
from apps.sharding.lease import LeaseHolder, lease_holder
from apps.sharding.routing import shard_map


@dataclass(frozen=True)
class StrandedFence:
    shard: str
    first: int
    last: int
    seconds: float  # how long the oldest bucket of the range has been fenced
    move_id: int | None
    holder: LeaseHolder | None

    @property
    def advice(self) -> str:
        buckets = f"buckets {self.first}..{self.last} fenced on {self.shard} for {self.seconds:.0f} s"
        if self.move_id is None:
            return f"{buckets} and no move is active: inspect with `manage.py move_buckets --status`"
        if self.holder is not None:
            return (
                f"{buckets}: move {self.move_id} is held by {self.holder.describe()}; if it is stuck,"
                f" end it (kill it, or `manage.py move_buckets --evict`) and run `manage.py move_buckets --resume`"
            )
        return (
            f"{buckets}: no process runs move {self.move_id}: run `manage.py move_buckets --resume`"
            " (or `--abort` to keep the range where it was)"
        )


def _ranges(buckets: list[int]) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    for bucket in sorted(buckets):
        if found and found[-1][1] == bucket - 1:
            found[-1] = (found[-1][0], bucket)
        else:
            found.append((bucket, bucket))
    return found


def stranded_fences(older_than: float | None = None) -> tuple[list[StrandedFence], list[str]]:
    """Stranded fences older than `older_than` seconds, and the shards that could not be read."""
    threshold = settings.SHARD_FENCE_ALARM_SECONDS if older_than is None else older_than
    current = shard_map()
    stranded: dict[str, list[tuple[int, float]]] = {}
    unreadable = []
    for alias, server in current.shards.items():
        try:
            with psycopg.connect(server.conninfo(connect_timeout=2), autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT bucket, extract(epoch FROM now() - changed_at)::float8 FROM sharding_bucket_owner"
                    " WHERE state = 'fenced' AND changed_at < now() - make_interval(secs => %s)",
                    [threshold],
                ).fetchall()
        except psycopg.Error:
            unreadable.append(alias)
            continue
        # Fenced where the map still sends writes: nobody serves these buckets.
        mine = [(b, age) for b, age in rows if current.alias_for_bucket(b) == alias]
        if mine:
            stranded[alias] = mine
    if not stranded:
        return [], unreadable
    active = moves.active_move()
    holder = lease_holder(active.id) if active is not None else None
    found = []
    for alias, buckets in stranded.items():
        ages = dict(buckets)
        for first, last in _ranges(list(ages)):
            oldest = max(ages[b] for b in range(first, last + 1))
            found.append(StrandedFence(alias, first, last, oldest, active.id if active else None, holder))
    return found, unreadable
