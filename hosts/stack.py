"""The hosts brought up and torn down: network, database servers, Redis, the relay, the app's roles.

This process (the orchestrator) stays in the machine's own network namespace and never
connects to a host: it starts processes inside their namespaces (`ip netns exec`), and
whatever must speak to the service runs on a host: the checks and one-off commands on the
app host, the load and readiness polls on the client host.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from apps.sharding.devstack import _apt_install, postgres_bindir
from chaos.supervisor import Program
from hosts import app, net, sentinels, servers
from hosts.cluster import ReplicatedDatabase, etcd_programs
from hosts.layout import (
    API_PORT,
    APP,
    CLIENT,
    CLUSTER_SHARD,
    CONTROL_MEMBER_HOSTS,
    DATABASE_HOSTS,
    DIR,
    LOGS,
    MEMBER_HOSTS,
    REDIS_HOSTS,
    RESULTS,
    SENTINEL_HOSTS,
    SHARD_HOSTS,
    SLOW_SHARD,
    host,
    relative,
)
from hosts.patroni import install_patroni

# Machine-wide, not per checkout: the namespaces are the machine's, and a run removes whatever
# namespaces with our prefix it finds as an earlier run's leftovers.
LOCK = Path("/run/lock/shardwallet-test-hosts.lock")


class StackError(RuntimeError):
    """The hosts could not be brought up; the message says which part and where its log is."""


def hold_run_lock() -> IO[str]:
    """One run at a time: a second one would tear the first one's namespaces down as leftovers."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = LOCK.open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another `make test-hosts` on this machine holds {LOCK}") from None
    return lock  # held until this process exits


def check_tools() -> None:
    """What the hosts need from the machine; PostgreSQL and Redis are installed if missing, as `make run` does."""
    missing = [tool for tool in ("ip", "ss", "runuser", "curl") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"make test-hosts needs {', '.join(missing)} (iproute2, util-linux, curl)")
    postgres_bindir()
    if shutil.which("redis-server") is None:
        _apt_install("redis-server")
    install_patroni()


def remove_leftovers() -> list[str]:
    """A crashed or killed earlier run's namespaces, processes and data."""
    said = net.remove_all(grace=5)
    if DIR.exists():
        shutil.rmtree(DIR)
        said.append(f"removed {relative(DIR)}")
    return said


@dataclass
class Stack:
    api_workers: int = 2
    api_threads: int = 8
    worker_concurrency: int = 2
    server_keepalives: bool = True
    config: app.AppConfig | None = None
    databases: list[servers.HostPostgres] = field(default_factory=list)
    programs: dict[str, Program] = field(default_factory=dict)
    cluster: ReplicatedDatabase = field(
        default_factory=lambda: ReplicatedDatabase.layout(CLUSTER_SHARD, "shardwallet", MEMBER_HOSTS)
    )
    control_cluster: ReplicatedDatabase = field(
        default_factory=lambda: ReplicatedDatabase.layout("default", "shardwallet_control", CONTROL_MEMBER_HOSTS)
    )
    api_key: str = ""
    client_id: int = 0

    @property
    def plan_file(self) -> Path:
        return DIR / "secrets" / "client-plan.json"

    def up(self) -> None:
        for directory in (LOGS, RESULTS):
            directory.mkdir(parents=True, exist_ok=True)
        net.create()
        servers.make_certificates()
        self._databases()
        self.config = app.configure(
            api_workers=self.api_workers, api_threads=self.api_threads, worker_concurrency=self.worker_concurrency
        )
        servers.set_relay_delay(0)
        for program in (
            *(servers.redis_program(self.config.env, on) for on in REDIS_HOSTS),
            *(servers.sentinel_program(on, self.config.env) for on in SENTINEL_HOSTS),
            servers.relay_program(host(SLOW_SHARD), self.config.env),
        ):
            self._start(program)
        self._plain_connection_refused()  # the slow shard is reached through its relay
        self._manage_or_fail("migrate_shards")
        # The API, the workers and beat connect as a member of shardwallet_app, not the owner.
        if app.python_on_app(self.config, "hosts.app_login", timeout=60).returncode != 0:
            raise StackError("the app's database login could not be made (see the lines above)")
        created = self._manage_or_fail("create_api_client", "hosts")
        self.api_key = created.stdout.strip().splitlines()[-1]
        found = re.search(r"API client (\d+)", created.stderr)
        if found is None:
            raise StackError(f"create_api_client did not say the client's id: {created.stderr.strip()}")
        self.client_id = int(found.group(1))
        try:
            seconds = sentinels.wait_ready(90)
        except TimeoutError as exc:
            raise StackError(f"{exc}; see {relative(LOGS)}/sentinel-*.log") from exc
        print(f"hosts: Redis's replica streams and its three sentinels know each other ({seconds:.0f} s)", flush=True)
        for program in app.programs(self.config).values():
            self._start(program)
        self._wait_ready()
        self._keep_cdc_slot()

    def _databases(self) -> None:
        keepalives = self.server_keepalives
        self.databases = [
            servers.HostPostgres.on(h, "shardwallet", keepalives=keepalives)
            for h in SHARD_HOSTS
            if h.name != CLUSTER_SHARD
        ]
        for program in etcd_programs():
            self._start(program)
        clusters = [(c, c.programs()) for c in (self.cluster, self.control_cluster)]
        for _, patroni in clusters:
            self._start(patroni[0])  # it bootstraps its cluster (initdb) while the single servers come up

        def bring_up(single: servers.HostPostgres) -> None:
            single.initialise()
            single.start()
            single.ensure_database()

        with ThreadPoolExecutor(max_workers=len(self.databases)) as pool:
            for future in [pool.submit(bring_up, c) for c in self.databases]:
                future.result()
        for _, patroni in clusters:
            for program in patroni[1:]:
                self._start(program)  # they clone the first member
        for cluster, _ in clusters:
            try:
                leader = cluster.settled(timeout=180)
            except TimeoutError as exc:
                where = f"{relative(LOGS)}/patroni-*.log"
                raise StackError(f"{cluster.scope}'s cluster did not settle: {exc}; see {where}") from exc
            cluster.create_database(leader)

    def _plain_connection_refused(self) -> None:
        """From the app host: a connection without TLS is refused, one verifying the CA is served."""
        assert self.config is not None  # noqa: S101 - configured just before
        result = app.python_on_app(self.config, "hosts.tls_probe", timeout=60)
        if result.returncode != 0:
            raise StackError("the database servers' TLS is not what it should be (see the lines above)")

    def _start(self, program: Program) -> None:
        program.start()
        self.programs[program.name] = program

    def _manage_or_fail(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.config is not None  # noqa: S101 - configured in up()
        result = app.manage(self.config, *args)
        if result.returncode != 0:
            raise StackError(f"manage.py {' '.join(args)} on the app host failed:\n{result.stderr.strip()[-2000:]}")
        return result

    def write_plan(self, *, per_shard: int, deposit: int) -> Path:
        """The client's instructions: the API's address and key, and which shard owns each bucket."""
        plan = {
            "host": APP.address, "port": API_PORT, "key": self.api_key, "owners": app.bucket_owners(),
            "per_shard": per_shard, "deposit": deposit,
        }  # fmt: skip
        self.plan_file.write_text(json.dumps(plan))
        self.plan_file.chmod(0o600)
        return self.plan_file

    def _wait_ready(self, timeout: float = 120) -> None:
        """/health/ready from the client host, then a saga worker consuming and the CDC streaming."""
        assert self.config is not None  # noqa: S101
        deadline = time.monotonic() + timeout
        poll = net.on(CLIENT, [sys.executable, "-m", "hosts.client", "ready", "--timeout", str(timeout)])
        if subprocess.run(poll, check=False).returncode != 0:  # noqa: S603 - our own command line
            raise StackError(f"the API did not become ready; see {relative(LOGS / 'api.log')}")
        for command, log in (("worker_ready", "worker.log"), ("cdc_ready", "cdc.log")):
            while True:
                self._check_alive()
                result = app.manage(self.config, command, timeout=60)
                if result.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise StackError(f"{command}: {result.stderr.strip()[-500:]}; see {relative(LOGS / log)}")
                time.sleep(1)

    def _keep_cdc_slot(self) -> None:
        """The CDC's slot on the replicated shard made permanent in Patroni, as an operator does
        after the CDC's first start (docs/DEPLOY.md): its stream then survives a failover."""
        assert self.config is not None  # noqa: S101
        slot = (app.cdc_status(self.config).get("cdc") or {}).get("slot")
        if not slot:
            raise StackError("the CDC's status does not name its slot")
        leader = self.cluster.settled(timeout=60)
        if not self.cluster.refuses_strangers(leader):
            raise StackError(f"Patroni on {leader.name} took a configuration change without the operator's password")
        self.cluster.keep_slot(leader, slot, "shardwallet")
        try:
            seconds = self.cluster.wait_slot_ready(leader, slot, timeout=120)
        except TimeoutError as exc:
            raise StackError(f"{exc}; see {relative(LOGS)}/patroni-*.log") from exc
        print(f"hosts: {CLUSTER_SHARD}'s standbys hold a copy of the CDC's slot {slot} ({seconds:.0f} s)", flush=True)

    def _check_alive(self) -> None:
        dead = [p.name for p in self.programs.values() if p.pid is None]
        if dead:
            raise StackError(f"{', '.join(dead)} exited; see {relative(LOGS)}/<name>.log")

    def dump_stacks(self, label: str) -> Path:
        """Every Python process on the app host, as py-spy sees it: what a hung request or task waits on."""
        out = LOGS / f"stacks-{label}.txt"
        with out.open("w") as dump:
            for pid in net.pids_in(APP.namespace):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
                except OSError:
                    continue
                dump.write(f"=== pid {pid}: {cmdline[:200]}\n")
                dump.flush()
                subprocess.run(  # noqa: S603 - our own command line
                    [str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(pid)],
                    stdout=dump, stderr=subprocess.STDOUT, timeout=30, check=False,
                )  # fmt: skip
        return out

    def dead_programs(self) -> list[str]:
        return [p.name for p in self.programs.values() if p.pid is None]

    def down(self) -> list[str]:
        """Stop everything, politely first; then whatever is left in the namespaces, and the namespaces."""
        said = []
        for host_obj in (*DATABASE_HOSTS, *REDIS_HOSTS):
            with contextlib.suppress(net.NetworkError):
                net.set_link(host_obj, up=True)  # a scenario that failed half-way may have left one down
        # The app's roles first, then Redis and the relay they use: a worker shutting down still
        # hands its unfinished tasks back to the broker.
        for program in reversed(self.programs.values()):
            program.kill_group(signal.SIGTERM)
            if program.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    program.process.wait(timeout=15)
            program.kill_group(signal.SIGKILL)
        if self.programs:
            said.append(f"stopped {', '.join(self.programs)}")
        for cluster in self.databases:
            try:
                if cluster.is_running():
                    cluster.stop()
                    said.append(f"{cluster.server.alias}: stopped")
            except servers.DevstackError as exc:
                said.append(f"{cluster.server.alias}: {exc}")
        said += net.remove_all(grace=10)
        return said
