"""`make ha-probe`: one shard as a three-member Patroni cluster on this machine, written to while
its primary fails, to measure the write pause and check that no acknowledged write is lost.

python -m hosts.ha_probe [--keep]

Three PostgreSQL members under Patroni (one synchronous standby, strict: a commit returns only
once the standby has it) over one etcd member, all on 127.0.0.1 under var/ha-probe/. A writer
inserts numbered rows through the service's own connection string (the map's `members`: libpq
keeps the member that takes writes) and records every row whose commit returned. Two faults:

1. the primary's postmaster is killed (SIGKILL): its Patroni, still holding the leader key,
   restarts it (crash recovery) - a pause, no failover;
2. the primary's host dies (its Patroni and postmaster killed): the leader key expires after
   Patroni's TTL, the synchronous standby is promoted, the writer's next connection finds it.

After each, every acknowledged row must be on the current primary. Prints each fault's write
pause (the longest gap between two acknowledged writes) and exits 0 when nothing was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import psycopg

from bench.stack import ROOT
from hosts.patroni import (
    EtcdMember,
    PatroniMember,
    etcd_argv,
    install_patroni,
    leading_member,
    patroni_argv,
    patroni_config,
    postmaster_pid,
    rest_get,
    wait_for_roles,
    write_config,
)

DIR = ROOT / "var" / "ha-probe"
ADDRESS = "127.0.0.1"
PG_PORT, API_PORT, ETCD_PORT = 25432, 28008, 23790
MEMBERS = 3


@dataclass
class Writer:
    """Inserts numbered rows, one transaction each, and keeps the numbers whose commit returned."""

    conninfo: str
    acknowledged: list[tuple[int, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: int = 0

    def run(self) -> None:
        number = 0
        conn: psycopg.Connection | None = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=2)
                number += 1
                conn.execute("INSERT INTO probe (n) VALUES (%s)", [number])
                self.acknowledged.append((number, time.monotonic()))
            except psycopg.Error:
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()

    def longest_gap(self, since: float) -> float:
        times = [at for _, at in self.acknowledged if at >= since - 1]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def conninfo(members: list[PatroniMember], password: str) -> str:
    from apps.sharding.shardmap import DatabaseServer

    first, *others = members
    server = DatabaseServer(
        "shard_00", first.address, first.pg_port, "postgres", "postgres", password,
        members=tuple(m.endpoint for m in others), sslmode="disable",  # one machine's loopback
    )  # fmt: skip
    return server.conninfo(connect_timeout=2)


def missing(writer: Writer, dsn: str) -> list[int]:
    """The acknowledged rows the primary does not have (those acknowledged before it is read)."""
    acknowledged = [n for n, _ in list(writer.acknowledged)]
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        present = {n for (n,) in conn.execute("SELECT n FROM probe").fetchall()}
    return [n for n in acknowledged if n not in present]


def wait_for_primary(members: list[PatroniMember], timeout: float) -> PatroniMember:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (member := leading_member(members)) is not None:
            return member
        time.sleep(0.5)
    raise TimeoutError("no primary")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m hosts.ha_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("the probe runs Patroni as the postgres user: run it as root")
    install_patroni()
    shutil.rmtree(DIR, ignore_errors=True)
    DIR.mkdir(parents=True)
    password = secrets.token_hex(16)
    etcd = [EtcdMember("etcd0", ADDRESS, ETCD_PORT, ETCD_PORT + 10, DIR / "etcd0")]
    hba = [
        "local all all trust",
        f"host all all {ADDRESS}/32 scram-sha-256",
        f"host replication replicator {ADDRESS}/32 scram-sha-256",
    ]
    members = [
        PatroniMember("shard_00", f"member{i}", ADDRESS, PG_PORT + i, API_PORT + i, DIR / "pg" / f"member{i}",
                      DIR / "config" / f"member{i}.yml")
        for i in range(MEMBERS)
    ]  # fmt: skip
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, argv_: list[str]) -> None:
        with (DIR / f"{name}.log").open("ab") as log:
            processes[name] = subprocess.Popen(argv_, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603

    ok = False
    try:
        start("etcd0", etcd_argv(etcd[0], etcd, "ha-probe"))
        for member in members:
            write_config(member, patroni_config(member, etcd, password=password, hba=hba))
            start(member.name, patroni_argv(member))
            time.sleep(2)  # the first bootstraps; the others then clone it
        started = time.monotonic()
        primary, _ = wait_for_roles(members)
        print(f"ha-probe: {primary.name} leads, a synchronous standby streams ({time.monotonic() - started:.0f} s)")
        dsn = conninfo(members, password)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE probe (n bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
        writer = Writer(dsn)
        thread = threading.Thread(target=writer.run, daemon=True)
        thread.start()
        time.sleep(3)
        lost_any = False
        for fault in ("postmaster", "host"):
            # Only a settled synchronous standby may be promoted (strict mode): a fault before
            # the cluster has one again leaves Patroni rightly refusing to fail over.
            primary, _ = wait_for_roles([m for m in members if rest_get(m, "/patroni") is not None], 90)
            before = len(writer.acknowledged)
            at = time.monotonic()
            if fault == "host":
                os.killpg(processes[primary.name].pid, signal.SIGKILL)  # runuser and its Patroni
            os.kill(postmaster_pid(primary), signal.SIGKILL)
            deadline = at + 90
            while len(writer.acknowledged) <= before + 10 and time.monotonic() < deadline:
                time.sleep(0.2)
            now_primary = wait_for_primary(members, 30)
            lost = missing(writer, dsn)
            lost_any = lost_any or bool(lost) or time.monotonic() >= deadline
            print(
                f"ha-probe: {fault} of {primary.name} killed: writes paused {writer.longest_gap(at):.1f} s,"
                f" primary now {now_primary.name}, {len(writer.acknowledged)} acknowledged,"
                f" {len(lost)} of them lost, {writer.errors} failed attempts so far"
            )
        writer.stop.set()
        thread.join(10)
        ok = not lost_any
        print(f"ha-probe: {'PASS' if ok else 'FAIL'} (logs in {DIR})")
    finally:
        if not args.keep:
            for process in processes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
            time.sleep(3)
            for process in processes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            subprocess.run(["pkill", "-KILL", "-u", "postgres", "-f", str(DIR)], check=False)  # noqa: S603, S607
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
