"""The fault schedule: drawn once from the seed, before anything runs, so a seed names a schedule."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

# Relative weights: process deaths are the common case in production, shard trouble the rare one.
FAULT_WEIGHTS = {
    "kill_celery_worker": 14,
    "kill_celery_child": 8,
    "kill_beat": 6,
    "kill_api_worker": 12,
    "kill_api_master": 5,
    "kill_cdc": 8,
    "crash_shard": 9,
    "pause_shard": 9,
    "flush_redis": 8,
    # A bucket range moves to another shard, its mover killed or stopped at a phase, a second
    # command beside it, shard_add during it (chaos/moves.py): about one fault in four.
    "move_buckets": 30,
}
# With `--clusters` only (the plain run's schedules, seed for seed, stay what they were): a
# shard's primary host dies and its synchronous standby is promoted (chaos/faults.py).
CLUSTER_FAULT_WEIGHTS = {"kill_primary": 10}
WARM_UP = (5.0, 10.0)  # seconds of clean load before the first fault
GAP = (3.0, 9.0)  # seconds between the end of one fault and the start of the next
PAUSE = (2.0, 6.0)  # how long a paused shard stays stopped
QUIET_TAIL = 5.0  # no fault starts this close to the end of the load
# Seconds from a primary kill to its host's member streaming again (the leader key's TTL, the
# promotion, the host's return, pg_rewind): no second primary kill before.
PRIMARY_DOWN = 60.0


@dataclass(frozen=True)
class PlannedFault:
    at: float  # seconds after the load started
    kind: str
    target: str  # a program name, or a shard alias
    pick: int  # which child process, for kinds that hit one of several (modulo how many there are)
    hold: float  # seconds a pause lasts (0 for the others)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_faults(
    seed: int, duration: float, *, shards: list[str], celery_workers: list[str], clusters: bool = False
) -> list[PlannedFault]:
    rng = random.Random(f"faults:{seed}")  # noqa: S311 - a reproducible schedule, not secrets
    table = {**FAULT_WEIGHTS, **(CLUSTER_FAULT_WEIGHTS if clusters else {})}
    kinds, weights = list(table), list(table.values())
    plan: list[PlannedFault] = []
    last_primary_kill = -PRIMARY_DOWN
    at = rng.uniform(*WARM_UP)
    while at < duration - QUIET_TAIL:
        # On clusters the first fault is a primary kill: every such run fails over at least once.
        kind = "kill_primary" if clusters and not plan else rng.choices(kinds, weights=weights)[0]
        if kind == "kill_primary" and at < last_primary_kill + PRIMARY_DOWN:
            kind = "crash_shard"  # one host down at a time: the first is still coming back
        if kind in ("crash_shard", "pause_shard", "kill_primary"):
            target = rng.choice(shards)
        elif kind in ("kill_celery_worker", "kill_celery_child"):
            target = rng.choice(celery_workers)
        elif kind in ("kill_api_worker", "kill_api_master"):
            target = "api"
        elif kind == "kill_beat":
            target = "beat"
        elif kind == "kill_cdc":
            target = "cdc"
        elif kind == "move_buckets":
            target = rng.choice(shards)  # the shard that receives the range
        else:
            target = "redis"
        hold = round(rng.uniform(*PAUSE), 2) if kind == "pause_shard" else 0.0
        plan.append(PlannedFault(round(at, 2), kind, target, rng.randrange(1000), hold))
        if kind == "kill_primary":
            last_primary_kill = at
        at += hold + rng.uniform(*GAP)
    return plan
