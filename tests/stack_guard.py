"""The suite empties tables and flushes Redis: it refuses to start on anything but its throw-away stack.

`settings_test` fills in the test stack's defaults only where no SHARDWALLET_* variable is
set, so a variable exported for `make run` would point the suite at real data. Before any
test runs, every database and Redis the suite would touch must belong to a stack whose shard
map declares `throwaway: true`, under a stack directory that is not `make run`'s.
"""

from __future__ import annotations

from pathlib import Path

from apps.sharding.devstack import Devstack
from apps.sharding.shardmap import ShardMap

RUN_STACK_DIRS = ("var/dev", "var/bench")


def stack_refusals(shard_map: ShardMap, shards_file: Path, stack_dir: Path, redis_url: str, root: Path) -> list[str]:
    """Why this stack is not the suite's to wipe (empty when it is)."""
    problems = []
    if not shard_map.throwaway:
        problems.append(f"the shard map {shards_file} does not declare `throwaway: true`")
    if stack_dir.resolve() in {(root / d).resolve() for d in RUN_STACK_DIRS}:
        problems.append(f"the stack directory {stack_dir} belongs to `make run` or `make bench`")
    problems += Devstack(shard_map, stack_dir, redis_url).foreign_servers()
    return problems
