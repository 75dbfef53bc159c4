"""The nemesis: runs the fault schedule against the live stack and logs each fault with its time.

Kills are SIGKILL (no clean-up code runs, as in an OOM kill or a power cut for that
process); a shard crash is `pg_ctl stop -m immediate` (no checkpoint: the restart replays
the WAL); a pause is SIGSTOP of the server and all its backends, so connections stay open
and queries hang, as when a server's machine or disk stalls; a Redis FLUSHALL loses
every queued and unacknowledged Celery message and the drain flags; with `--clusters`, a
primary kill takes a shard's leading member's host down (its Patroni and server SIGKILLed)
until the synchronous standby has been promoted, and the other shard faults hit whichever
member leads at the time; a bucket move runs
`move_buckets` as operators and crashes would (chaos/moves.py: killed or stopped at a named
phase, a second command beside it, `shard_add` during it).
Restarts are the supervisor's job, not the nemesis's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis

from apps.sharding.devstack import postgres_bindir
from chaos.clusters import HOST_DOWN_SECONDS, Clusters, ShardCluster
from chaos.moves import MoveDriver
from chaos.schedule import PlannedFault
from chaos.supervisor import Supervisor, postmaster_pid
from chaos.timeline import Timeline
from hosts.patroni import PatroniMember

INJECT_TRIES = 15  # one a second
PROMOTION_BOUND = 90.0  # seconds for a killed primary's synchronous standby to take over


class Nemesis(threading.Thread):
    def __init__(
        self,
        *,
        plan: list[PlannedFault],
        supervisor: Supervisor,
        redis_url: str,
        timeline: Timeline,
        clusters: Clusters | None = None,
    ) -> None:
        super().__init__(name="chaos-nemesis", daemon=True)
        self.plan = plan
        self.supervisor = supervisor
        self.clusters = clusters
        self.redis_url = redis_url
        self.timeline = timeline
        self.halt = threading.Event()
        self.injected: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self._paused: list[psutil.Process] = []
        self._watchers: list[threading.Thread] = []
        self.promotions: list[dict[str, Any]] = []  # after each primary kill: who took over, how soon
        self._paused_lock = threading.Lock()
        self._inject: dict[str, Callable[[PlannedFault], str | None]] = {
            "kill_celery_worker": lambda f: self._kill_program(f, f.target),
            "kill_celery_child": lambda f: self._kill_child(f, f.target),
            "kill_beat": lambda f: self._kill_program(f, "beat"),
            "kill_api_worker": lambda f: self._kill_child(f, "api"),
            "kill_api_master": lambda f: self._kill_program(f, "api"),
            "kill_cdc": lambda f: self._kill_program(f, "cdc"),
            "crash_shard": self._crash_shard,
            "kill_primary": self._kill_primary,
            "pause_shard": self._pause_shard,
            "flush_redis": self._flush_redis,
            "move_buckets": self._move_buckets,
        }
        self.mover = MoveDriver(timeline)

    def run(self) -> None:
        for fault in self.plan:
            if self.halt.wait(max(0.0, fault.at - self.timeline.now())):
                return
            # A fault whose victim is not there right now (a program being restarted, a shard
            # down) is tried again for a while: the run counts only faults that hit something.
            for _ in range(INJECT_TRIES):
                try:
                    detail = self._inject[fault.kind](fault)
                except Exception as exc:  # a fault that cannot be injected is logged, never fatal
                    detail = None
                    self.timeline.record("fault", f"{fault.kind} {fault.target} could not be injected: {exc}")
                if detail is not None or self.halt.wait(1.0):
                    break
            if detail is None:
                self.skipped[fault.kind] += 1
                continue
            self.injected[fault.kind] += 1

    def stop(self) -> None:
        """Stop injecting; a shard paused right now is resumed at once."""
        self.halt.set()
        if self.is_alive():
            self.join(timeout=30)
        self._resume_paused()

    def _log(self, fault: PlannedFault, detail: str) -> str:
        self.timeline.record("fault", f"{fault.kind} {fault.target}: {detail}", fault=fault.kind, target=fault.target)
        return detail

    def _skip(self, fault: PlannedFault, why: str) -> None:
        self.timeline.record("fault", f"{fault.kind} {fault.target} skipped: {why}", fault=fault.kind, skipped=True)

    def _kill_program(self, fault: PlannedFault, name: str) -> str | None:
        pid = self.supervisor.pid(name)
        if pid is None:
            self._skip(fault, "not running (being restarted)")
            return None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self._skip(fault, f"pid {pid} exited first")
            return None
        return self._log(fault, f"SIGKILL pid {pid}")

    def _kill_child(self, fault: PlannedFault, name: str) -> str | None:
        children = self.supervisor.children(name)
        if not children:
            self._skip(fault, "no child process")
            return None
        victim = children[fault.pick % len(children)]
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            self._skip(fault, f"child pid {victim.pid} of {name} exited first")
            return None
        return self._log(fault, f"SIGKILL child pid {victim.pid} of {name}")

    def _flush_redis(self, fault: PlannedFault) -> str | None:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.flushall()
        finally:
            client.close()
        return self._log(fault, "FLUSHALL")

    def _server_dir(self, alias: str) -> Path | None:
        """The data directory of the server taking the shard's writes: its single server, or its
        cluster's leader (None while none leads)."""
        if self.clusters is None:
            return self.supervisor.shards[alias].cluster.data_dir
        cluster = self.clusters.of(alias)
        leader = cluster.leader() if cluster is not None else None
        return leader.data_dir if leader is not None else None

    def _crash_shard(self, fault: PlannedFault) -> str | None:
        """The server stops at once, as in a power cut; under Patroni, its leader restarts it
        (crash recovery, no failover: the leader key is still its own)."""
        data_dir = self._server_dir(fault.target)
        if data_dir is None or postmaster_pid(data_dir) is None:
            self._skip(fault, "already down")
            return None
        argv = [str(postgres_bindir() / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate", "-w"]
        if os.geteuid() == 0:  # PostgreSQL's tools refuse to run as root
            argv = ["runuser", "-u", "postgres", "--", *argv]
        detail = self._log(fault, "pg_ctl stop -m immediate")  # logged first: the supervisor reacts at once
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)  # noqa: S603
        if result.returncode != 0:
            self.timeline.record("fault", f"crash_shard {fault.target}: pg_ctl failed: {result.stderr.strip()}")
            return None
        return detail

    def _kill_primary(self, fault: PlannedFault) -> str | None:
        """The primary's host dies (its Patroni and its server SIGKILLed) and stays down until its
        leader key has expired: the synchronous standby is promoted. The host then comes back and
        its member rejoins as a standby (pg_rewind)."""
        cluster = self.clusters.of(fault.target) if self.clusters is not None else None
        leader = cluster.leader() if cluster is not None else None
        if cluster is None or leader is None:
            self._skip(fault, "no leader right now")
            return None
        pid = postmaster_pid(leader.data_dir)
        program = cluster.program_name(leader)
        self.supervisor.hold(program, HOST_DOWN_SECONDS)
        detail = self._log(fault, f"{leader.name}'s host down for {HOST_DOWN_SECONDS}s (Patroni and server SIGKILL)")
        self.supervisor.programs[program].kill_group()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        watcher = threading.Thread(target=self._watch_promotion, args=(cluster, leader), daemon=True)
        watcher.start()
        self._watchers.append(watcher)
        return detail

    def _watch_promotion(self, cluster: ShardCluster, old: PatroniMember) -> None:
        """Record which member took over, and when (the run fails if none does)."""
        started = time.monotonic()
        while time.monotonic() - started < PROMOTION_BOUND:
            leader = cluster.leader()
            if leader is not None and leader != old:
                seconds = round(time.monotonic() - started, 1)
                took = {"shard": cluster.alias, "from": old.name, "to": leader.name, "seconds": seconds}
                self.promotions.append(took)
                self.timeline.record("fault", f"kill_primary {cluster.alias}: {leader.name} leads, {seconds}s after")
                return
            time.sleep(0.5)
        self.promotions.append({"shard": cluster.alias, "from": old.name, "to": None, "seconds": None})
        self.timeline.record("fault", f"kill_primary {cluster.alias}: no member took over in {PROMOTION_BOUND}s")

    def wait_for_promotions(self) -> None:
        for watcher in self._watchers:
            watcher.join(timeout=PROMOTION_BOUND)

    def _pause_shard(self, fault: PlannedFault) -> str | None:
        data_dir = self._server_dir(fault.target)
        pid = postmaster_pid(data_dir) if data_dir is not None else None
        if pid is None:
            self._skip(fault, "down")
            return None
        try:
            postmaster = psutil.Process(pid)
            group = [postmaster, *postmaster.children(recursive=True)]
        except psutil.NoSuchProcess:
            self._skip(fault, "down")
            return None
        with self._paused_lock:
            # The postmaster first, so that it forks no new backend while the rest are stopped.
            for proc in group:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.suspend()
                    self._paused.append(proc)
        detail = self._log(fault, f"SIGSTOP {len(group)} processes for {fault.hold:g}s")
        self.halt.wait(fault.hold)  # cut short when the run stops; resumed either way
        self._resume_paused()
        self.timeline.record("fault", f"pause_shard {fault.target}: SIGCONT")
        return detail

    def _move_buckets(self, fault: PlannedFault) -> str | None:
        started = self.mover.start(fault)
        if started is None:
            self._skip(fault, "a move is running (or no range to move)")
            return None
        return self._log(fault, started)

    def _resume_paused(self) -> None:
        with self._paused_lock:
            for proc in self._paused:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.resume()
            self._paused.clear()
