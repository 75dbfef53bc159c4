"""`make bench BENCH_ARGS="--standbys sync"`: each shard a primary with a streaming standby of
its own, on this machine, to measure what replication costs the hot path.

`sync`: every commit waits for its standby's flush (`synchronous_standby_names = '*'`, what
Patroni's strict synchronous mode sets); `async`: the standby streams, commits do not wait.
The service keeps talking to the primaries only (the map is unchanged): what is measured is
the commit's wait and the standbys' share of the CPU, not a failover.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psycopg

from apps.sharding.devstack import PostgresCluster
from apps.sharding.shardmap import DatabaseServer

MODES = ("none", "async", "sync")
PORT_OFFSET = 50  # each standby listens on its primary's port + this


def start_standbys(servers: list[DatabaseServer], mode: str, workdir: Path) -> list[PostgresCluster]:
    """A standby per primary (`pg_basebackup -R`), then the primaries' commits made to wait for
    them (`sync`) or not (`async`); returns the standbys, to stop."""
    if mode == "none":
        return []
    standbys = []
    for server in servers:
        replica = DatabaseServer(server.alias, server.host, server.port + PORT_OFFSET, server.name, server.user)
        standby = PostgresCluster(replica, workdir / "standbys" / server.alias)
        shutil.rmtree(standby.data_dir, ignore_errors=True)
        standby.initialise_standby(server)
        standby.start()
        standbys.append(standby)
    names = "*" if mode == "sync" else ""
    for server in servers:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
            conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 30
    wanted = "sync" if mode == "sync" else "async"
    while not all(_streaming(server, wanted) for server in servers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the standbys are not streaming ({wanted}) after 30 s")
        time.sleep(0.2)
    return standbys


def stop_standbys(standbys: list[PostgresCluster]) -> None:
    for standby in standbys:
        if standby.is_running():
            standby.stop("immediate")
        shutil.rmtree(standby.data_dir, ignore_errors=True)


def _streaming(server: DatabaseServer, sync_state: str) -> bool:
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = %s", [sync_state]
        ).fetchone()
    return bool(row and row[0])
