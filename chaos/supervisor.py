"""A small process supervisor: restarts whatever dies, after a short random delay, as systemd would.

Each program runs in its own process group. When a program's main process exits, whatever
is left of its group (gunicorn's workers, Celery's pool processes) is killed before the
restart, like systemd's default control-group kill: an orphaned worker holding the port or
a task would otherwise outlive its master. Shard servers are watched through their
`postmaster.pid` and started again the same way after a crash.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from apps.sharding.devstack import DevstackError, PostgresCluster
from chaos.timeline import Timeline

RESTART_DELAY = (0.5, 3.0)  # seconds, drawn at random for each restart
POLL_SECONDS = 0.2


@dataclass
class Program:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None  # monotonic time of the next start, while down
    held_until: float = 0.0  # no restart before this monotonic time (`Supervisor.hold`)

    @property
    def pid(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    def start(self) -> None:
        with self.log.open("ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            # A session of its own: the whole group can be killed at once, and Ctrl-C in the
            # terminal reaches only the harness, which stops everything in order.
            self.process = subprocess.Popen(  # noqa: S603 - our own argv
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)


def postmaster_pid(data_dir: Path) -> int | None:
    """The main process of the server on `data_dir`, if it is alive (a stopped, i.e. paused, one counts as alive)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:
        return None
    return pid


@dataclass
class Shard:
    cluster: PostgresCluster
    restart_at: float | None = None


@dataclass
class Supervisor:
    programs: dict[str, Program]
    shards: dict[str, Shard]
    timeline: Timeline
    rng: random.Random
    restarts: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        for program in self.programs.values():
            program.start()
        self._thread = threading.Thread(target=self._watch, name="chaos-supervisor", daemon=True)
        self._thread.start()

    def launch(self, programs: dict[str, Program]) -> None:
        """Start more programs and watch them too (the service, once its databases are up)."""
        for program in programs.values():
            program.start()
        self.programs = {**self.programs, **programs}  # a new dict: the watcher iterates the old one

    def hold(self, name: str, seconds: float) -> None:
        """Restart `name`, when it next exits, no sooner than `seconds` from now: a host that stays
        down long enough for the others to notice (a database cluster's leader key to expire)."""
        self.programs[name].held_until = time.monotonic() + seconds

    def _delay(self) -> float:
        return time.monotonic() + self.rng.uniform(*RESTART_DELAY)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            for program in self.programs.values():
                self._check_program(program)
            for alias, shard in self.shards.items():
                self._check_shard(alias, shard)

    def _check_program(self, program: Program) -> None:
        proc = program.process
        if proc is None or self._stop.is_set():
            return
        code = proc.poll()
        if code is None:
            return
        if program.restart_at is None:
            program.kill_group()  # its orphans: gunicorn workers, Celery pool processes
            program.restart_at = max(self._delay(), program.held_until)
            self.timeline.record("supervisor", f"{program.name} exited ({code}); restarting", program=program.name)
        elif time.monotonic() >= program.restart_at:
            program.restart_at = None
            program.start()
            self.restarts[program.name] += 1
            self.timeline.record("supervisor", f"{program.name} started again (pid {program.pid})")

    def _check_shard(self, alias: str, shard: Shard) -> None:
        if postmaster_pid(shard.cluster.data_dir) is not None or self._stop.is_set():
            shard.restart_at = None
            return
        if shard.restart_at is None:
            shard.restart_at = self._delay()
            self.timeline.record("supervisor", f"{alias} is down; restarting")
        elif time.monotonic() >= shard.restart_at:
            try:
                shard.cluster.start()
            except DevstackError as exc:  # e.g. its port still held: try again shortly
                shard.restart_at = self._delay()
                self.timeline.record("supervisor", f"{alias} did not start: {exc}")
                return
            shard.restart_at = None
            self.restarts[alias] += 1
            self.timeline.record("supervisor", f"{alias} started again")

    def pid(self, name: str) -> int | None:
        return self.programs[name].pid

    def children(self, name: str) -> list[psutil.Process]:
        pid = self.pid(name)
        if pid is None:
            return []
        try:
            return sorted(psutil.Process(pid).children(), key=lambda p: p.pid)
        except psutil.NoSuchProcess:
            return []

    def all_up(self) -> bool:
        programs_up = all(p.pid is not None and p.restart_at is None for p in self.programs.values())
        return programs_up and all(postmaster_pid(s.cluster.data_dir) is not None for s in self.shards.values())

    def stop(self, timeout: float = 15.0) -> None:
        """Stop watching, then stop every program: SIGTERM to each group, SIGKILL to what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for program in self.programs.values():
            program.kill_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for program in self.programs.values():
            if program.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    program.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            program.kill_group(signal.SIGKILL)
            if program.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    program.process.wait(timeout=5)
