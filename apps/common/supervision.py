"""`manage.py serve`'s process supervisor: a role that dies is started again, with backoff.

Each program runs in a session of its own, so Ctrl-C in the terminal reaches only `serve`,
which then stops everything in order, and so that whatever is left of a dead program's
process group (gunicorn's workers, Celery's pool processes) is killed before the restart: an
orphan would otherwise hold the port or a task. The delay doubles with each death in a row
(1 s, 2 s, 4 s ... at most 30 s) and starts again at 1 s once a program has stayed up a
while; a program that dies GIVE_UP_AFTER times in a row, never staying up, is broken rather
than unlucky (a port taken, a wrong setting), and the supervisor gives up, as supervisord
does after `startretries`. Every restart is logged and written to a small state file that
/metrics reads (`shardwallet_supervised_restarts_total`).

Stopping sends SIGTERM to each program's main process only, so that gunicorn and Celery shut
down warmly (running requests and saga steps finish), then SIGKILL to what is left of its
group after the timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
STABLE_AFTER_SECONDS = 30.0  # up this long: the next death counts as the first in a row
STOP_TIMEOUT_SECONDS = 15.0
GIVE_UP_AFTER = 5  # deaths in a row (1 + 2 + 4 + 8 s of backoff between them)


class SupervisorGaveUp(RuntimeError):
    """A program keeps dying as soon as it starts."""


@dataclass
class Program:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # monotonic time of the next start, while down
    restarts: int = 0
    deaths_in_row: int = 0
    last_exit_code: int | None = None

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, now: float) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env, start_new_session=True)  # noqa: S603 - own argv
        self.started_at = now
        self.restart_at = None

    def signal_group(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)


def backoff_seconds(deaths_in_row: int) -> float:
    return min(BACKOFF_FIRST_SECONDS * 2 ** max(deaths_in_row - 1, 0), BACKOFF_MAX_SECONDS)


class Supervisor:
    def __init__(self, programs: list[Program], state_file: Path, log: Callable[[str], None]) -> None:
        self.programs = {program.name: program for program in programs}
        self.state_file = state_file
        self.log = log

    def start_all(self) -> None:
        now = time.monotonic()
        for program in self.programs.values():
            program.start(now)
        self.write_state()

    def poll(self) -> None:
        """Notice deaths, schedule restarts, make the restarts that are due."""
        now = time.monotonic()
        changed = False
        for program in self.programs.values():
            if program.process is not None and program.restart_at is None:
                code = program.process.poll()
                if code is None:
                    if now - program.started_at >= STABLE_AFTER_SECONDS:
                        program.deaths_in_row = 0
                    continue
                program.signal_group(signal.SIGKILL)  # its orphans, if any
                program.last_exit_code = code
                program.deaths_in_row += 1
                if program.deaths_in_row >= GIVE_UP_AFTER:
                    self.write_state()
                    raise SupervisorGaveUp(
                        f"{program.name} exited {program.deaths_in_row} times in a row (last code {code}),"
                        f" never staying up {STABLE_AFTER_SECONDS:.0f}s: giving up"
                    )
                delay = backoff_seconds(program.deaths_in_row)
                program.restart_at = now + delay
                self.log(
                    f"{program.name} exited with code {code}; restarting in {delay:.0f}s"
                    f" (death {program.deaths_in_row} in a row, {program.restarts} restart(s) so far)"
                )
                changed = True
            elif program.restart_at is not None and now >= program.restart_at:
                program.start(now)
                program.restarts += 1
                self.log(f"{program.name} restarted (pid {program.process.pid if program.process else '?'})")
                changed = True
        if changed:
            self.write_state()

    def stop_all(self) -> None:
        """SIGTERM to every main process, then SIGKILL to what is left of each group."""
        for program in self.programs.values():
            program.restart_at = None
            if program.up and program.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    program.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for program in self.programs.values():
            if program.process is None:
                continue
            try:
                program.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.log(f"{program.name} did not stop in {STOP_TIMEOUT_SECONDS:.0f}s; killing it")
            program.signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                program.process.wait(timeout=5)  # reaped: no process of ours is left, not even a zombie
        self.state_file.unlink(missing_ok=True)

    def state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "updated_at": time.time(),
            "programs": {
                name: {
                    "pid": program.process.pid if program.up and program.process else None,
                    "up": program.up,
                    "restarts": program.restarts,
                    "last_exit_code": program.last_exit_code,
                }
                for name, program in self.programs.items()
            },
        }

    def write_state(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2))
        tmp.replace(self.state_file)


def supervisor_state_file() -> Path:
    from django.conf import settings

    return Path(settings.DEVSTACK_DIR) / "supervisor.json"


def read_state(state_file: Path) -> dict[str, Any] | None:
    """The state of a supervisor that is running now, else None."""
    try:
        state = json.loads(state_file.read_text())
        os.kill(int(state["pid"]), 0)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, ValueError, ProcessLookupError):
        return None
    except PermissionError:
        pass  # alive, another user's
    return state
