"""`make chaos CHAOS_ARGS=--clusters`: every shard a Patroni cluster of three members on this machine.

The production layout's shards (docs/DEPLOY.md) in miniature: each shard's members (one
primary, a strict synchronous standby, a replica) run under Patroni over one etcd member,
on loopback ports under var/chaos/clusters/, supervised like the service's programs. The
shard map lists every member, so the service finds the primary by itself; the CDC's slot is
made one of each cluster's permanent slots, so the audit stream follows a failover. Patroni
runs PostgreSQL as the postgres user: the harness must run as root.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml

from apps.sharding.devstack import postgres_bindir
from chaos.supervisor import Program, postmaster_pid
from hosts.patroni import (
    TTL,
    EtcdMember,
    PatroniMember,
    etcd_argv,
    leading_member,
    patroni_argv,
    patroni_config,
    permanent_slot,
    slot_copy_safe,
    wait_for_roles,
    write_config,
)

MEMBERS = 3
PG_PORT = 29640  # shard i's member m listens on PG_PORT + MEMBERS * i + m
REST_PORT = 29660  # its Patroni's REST API likewise
ETCD_PORT = 29690  # clients; peers one above
ADDRESS = "127.0.0.1"
# A killed primary's host stays down this long, so that its leader key expires and the
# synchronous standby is promoted (a host back within the TTL just takes its key again).
HOST_DOWN_SECONDS = TTL + 10
# One machine's loopback, a throw-away stack: trusted as the single servers of `make chaos` are.
HBA = [
    "local all all trust",
    f"host all all {ADDRESS}/32 trust",
    f"host replication all {ADDRESS}/32 trust",
]


@dataclass(frozen=True)
class ShardCluster:
    alias: str
    members: list[PatroniMember]

    def program_name(self, member: PatroniMember) -> str:
        return f"patroni-{member.name}"

    def leader(self) -> PatroniMember | None:
        """The member that says it leads, if one does (asked over its REST API)."""
        return leading_member(self.members)

    def map_entry(self) -> dict[str, Any]:
        """The shard's place in the map: the first member's address, the others as `members`."""
        first, *others = self.members
        return {"host": first.address, "port": first.pg_port, "members": [m.endpoint for m in others]}


@dataclass(frozen=True)
class Clusters:
    directory: Path
    logs: Path  # each program's log, Patroni's among them
    shards: list[ShardCluster]

    @classmethod
    def layout(cls, directory: Path, logs: Path, shards: int) -> Clusters:
        clusters = []
        for i in range(shards):
            alias = f"shard_{i:02d}"
            members = [
                PatroniMember(alias, f"{alias}-m{m}", ADDRESS, PG_PORT + MEMBERS * i + m, REST_PORT + MEMBERS * i + m,
                              directory / "pg" / f"{alias}-m{m}", directory / "config" / f"{alias}-m{m}.yml")
                for m in range(MEMBERS)
            ]  # fmt: skip
            clusters.append(ShardCluster(alias, members))
        return cls(directory, logs, clusters)

    @property
    def etcd(self) -> EtcdMember:
        return EtcdMember("etcd0", ADDRESS, ETCD_PORT, ETCD_PORT + 1, self.directory / "etcd0")

    def of(self, alias: str) -> ShardCluster | None:
        return next((c for c in self.shards if c.alias == alias), None)

    def rewrite_map(self, path: Path) -> None:
        """The stack's shard map with each shard at its cluster's members."""
        data = yaml.safe_load(path.read_text())
        for entry in data["shards"]:
            cluster = self.of(entry["alias"])
            if cluster is not None:
                entry.update(cluster.map_entry())
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def programs(self, env: dict[str, str]) -> dict[str, Program]:
        """etcd, then every member's Patroni (the first of each cluster bootstraps it, the others clone)."""
        password = secrets.token_hex(16)
        self.etcd.data_dir.mkdir(parents=True, exist_ok=True)
        etcd = etcd_argv(self.etcd, [self.etcd], "chaos")
        programs = {"etcd": Program("etcd", etcd, env, self.logs / "etcd.log")}
        for cluster in self.shards:
            for member in cluster.members:
                write_config(member, patroni_config(member, [self.etcd], password=password, hba=HBA))
                name = cluster.program_name(member)
                programs[name] = Program(name, patroni_argv(member), env, self.logs / f"{name}.log")
        return programs

    def wait_settled(self, timeout: float) -> dict[str, str]:
        """Until every cluster has a leader and a synchronous standby; each shard's leader by name."""
        return {c.alias: wait_for_roles(c.members, timeout)[0].name for c in self.shards}

    def create_databases(self, database: str) -> None:
        """CREATE DATABASE on each leader (the standbys get it by replication)."""
        for cluster in self.shards:
            leader = cluster.leader()
            if leader is None:
                raise RuntimeError(f"{cluster.alias} has no leader")
            conninfo = f"host={leader.address} port={leader.pg_port} user=postgres dbname=postgres"
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone() is None:
                    conn.execute(f'CREATE DATABASE "{database}"')

    def keep_slot(self, slot: str, database: str, timeout: float) -> float:
        """Make the CDC's slot permanent in every cluster (`PATCH /config`, as `patronictl edit-config`),
        then wait until every standby's Patroni says its copy is safe after a failover; the seconds."""
        for cluster in self.shards:
            leader = cluster.leader()
            if leader is None or rest_patch(leader, "/config", permanent_slot(slot, database)) is None:
                raise RuntimeError(f"{cluster.alias}: no leader took the permanent slot {slot}")
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            leaders = {c.alias: c.leader() for c in self.shards}
            standbys = [(c, m) for c in self.shards for m in c.members if m != leaders[c.alias]]
            if all(slot_copy_safe(self.logs / f"{c.program_name(m)}.log", slot) for c, m in standbys):
                return round(time.monotonic() - started, 1)
            time.sleep(1)
        raise TimeoutError(f"the standbys did not report the slot {slot} safe after {timeout:.0f} s")

    def stop_leftovers(self) -> None:
        """Servers an earlier run's Patroni left running (its harness was killed): stopped at once."""
        for cluster in self.shards:
            for member in cluster.members:
                if postmaster_pid(member.data_dir) is None:
                    continue
                argv = [str(postgres_bindir() / "pg_ctl"), "stop", "-D", str(member.data_dir), "-m", "immediate"]
                subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, check=False)  # noqa: S603, S607

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def rest_patch(member: PatroniMember, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """A PATCH of Patroni's REST API on the member (no auth: loopback, a throw-away stack)."""
    request = urllib.request.Request(  # noqa: S310 - our URL
        f"{member.api_url}{path}", data=json.dumps(body).encode(), method="PATCH",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return dict(json.loads(answer.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("--clusters runs Patroni as the postgres user: run make chaos as root")
