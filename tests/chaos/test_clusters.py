"""`make chaos --clusters`: its shard map, its schedule and the supervisor's hold on a dead host.
The run itself (Patroni, root) is `make chaos CHAOS_ARGS=--clusters`; these check the parts a
plain run relies on too."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

from apps.sharding.shardmap import parse_shard_map
from bench.stack import StackLayout
from chaos.clusters import MEMBERS, Clusters
from chaos.schedule import PRIMARY_DOWN, plan_faults
from chaos.supervisor import RESTART_DELAY, Program, Supervisor
from chaos.timeline import Timeline

SHARDS = ["shard_00", "shard_01", "shard_02"]
WORKERS = ["worker-1", "worker-2"]


def test_the_map_names_every_member_of_each_shards_cluster(tmp_path: Path) -> None:
    layout = StackLayout(tmp_path, base_port=39600, redis_port=39679, api_port=39680, audit_http_port=39623)
    path = layout.write_shard_map(3)
    clusters = Clusters.layout(tmp_path / "clusters", tmp_path / "logs", 3)
    clusters.rewrite_map(path)
    shard_map = parse_shard_map(yaml.safe_load(path.read_text()))
    ports = set()
    for cluster in clusters.shards:
        server = shard_map.shards[cluster.alias]
        assert [f"{h}:{p}" for h, p in server.endpoints] == [m.endpoint for m in cluster.members]
        assert server.libpq_address["target_session_attrs"] == "read-write"
        ports |= {m.pg_port for m in cluster.members} | {m.api_port for m in cluster.members}
    assert len(ports) == 2 * MEMBERS * 3  # no two members share a port
    assert shard_map.control.port == 39600
    assert not shard_map.control.members


def test_a_run_on_clusters_fails_over_first_and_never_twice_at_once() -> None:
    for seed in range(1, 40):
        plan = plan_faults(seed, 600, shards=SHARDS, celery_workers=WORKERS, clusters=True)
        kills = [f.at for f in plan if f.kind == "kill_primary"]
        assert plan[0].kind == "kill_primary"
        assert all(b - a >= PRIMARY_DOWN for a, b in itertools.pairwise(kills))
        assert {f.target for f in plan if f.kind == "kill_primary"} <= set(SHARDS)


def test_a_plain_run_has_no_primary_kill_and_keeps_its_schedule() -> None:
    for seed in (7, 1812, 2026):
        plain = plan_faults(seed, 180, shards=SHARDS, celery_workers=WORKERS)
        assert "kill_primary" not in {f.kind for f in plain}
        assert plain == plan_faults(seed, 180, shards=SHARDS, celery_workers=WORKERS)  # a seed names it


def test_a_held_program_stays_down_for_the_hold(tmp_path: Path) -> None:
    """A killed primary's Patroni comes back only after the hold (its leader key must expire
    first); another program killed at the same time comes back within the usual delay."""
    marker = "chaos-held-program-test"  # names this test's processes alone (pgrep below)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)", marker]
    programs = {n: Program(n, sleeper, {}, tmp_path / f"{n}.log") for n in ("held", "free")}
    supervisor = Supervisor({}, {}, Timeline(), random.Random(0))
    supervisor.start()
    try:
        supervisor.launch(programs)
        first = {n: p.pid for n, p in programs.items()}
        supervisor.hold("held", 8)
        for program in programs.values():
            program.kill_group()
        time.sleep(RESTART_DELAY[1] + 1)  # the longest ordinary delay, and a poll
        assert programs["free"].pid not in (None, first["free"])
        assert programs["held"].pid is None  # still held
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and programs["held"].pid is None:
            time.sleep(0.1)
        assert programs["held"].pid not in (None, first["held"])
    finally:
        supervisor.stop()
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0
