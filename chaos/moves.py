"""Bucket moves as faults: `manage.py move_buckets` run as an operator would, sometimes killed mid-way.

One move at a time (the service allows no more). A killed mover leaves its move active; the
next move fault resumes it (`--resume`) instead of starting another, and the settle phase
finishes whatever is left before the checks, which then see the final map.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from chaos.schedule import PlannedFault
from chaos.timeline import Timeline

ROOT = Path(__file__).resolve().parent.parent
SIZES = (16, 32, 64)  # buckets per move


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def _active_move() -> bool:
    from apps.sharding.moves import active_move

    return active_move() is not None


def pick_range(pick: int, target: str) -> tuple[int, int] | None:
    """A range of one other shard's buckets, chosen by `pick` from the map as it is now."""
    from apps.sharding.routing import refresh_shard_map

    current = refresh_shard_map()
    candidates = [r for r in current.ranges if r.alias != target and r.last - r.first + 1 >= SIZES[0]]
    if not candidates:
        return None
    chosen = candidates[pick % len(candidates)]
    size = min(SIZES[pick % len(SIZES)], chosen.last - chosen.first + 1)
    slots = (chosen.last - chosen.first + 1) // size
    first = chosen.first + (pick // 7 % slots) * size
    return first, first + size - 1


class MoveDriver:
    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.outcomes: Counter[str] = Counter()
        self._thread: threading.Thread | None = None

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, fault: PlannedFault) -> str | None:
        if self.busy():
            return None
        if _active_move():
            argv, what = _manage("move_buckets", "--resume", "--cleanup-delay", "2"), "resume the interrupted move"
        else:
            chosen = pick_range(fault.pick, fault.target)
            if chosen is None:
                return None
            first, last = chosen
            argv = _manage("move_buckets", str(first), str(last), "--to", fault.target, "--cleanup-delay", "2")
            what = f"move buckets {first}..{last} to {fault.target}"
        kill_after = 1.5 + (fault.pick % 7) * 0.75 if fault.pick % 3 == 0 else None  # startup is ~1.5 s
        self._thread = threading.Thread(target=self._run, args=(argv, what, kill_after), daemon=True)
        self._thread.start()
        return what + (f" (the mover is killed after {kill_after:g} s)" if kill_after else "")

    def _run(self, argv: list[str], what: str, kill_after: float | None) -> None:
        proc = subprocess.Popen(  # noqa: S603 - our own command line
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            output, _ = proc.communicate(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            self.outcomes["killed"] += 1
            self.timeline.record("fault", f"move_buckets: mover SIGKILLed ({what})")
            return
        except Exception as exc:  # never let the nemesis thread die with it
            self.outcomes["error"] += 1
            self.timeline.record("fault", f"move_buckets: {what}: {exc}")
            return
        outcome = "done" if proc.returncode == 0 else "stopped"
        self.outcomes[outcome] += 1
        last = (output.strip().splitlines() or [""])[-1]
        self.timeline.record("fault", f"move_buckets: {what}: {outcome}: {last[-300:]}")

    def finish(self, timeout: float = 300) -> str | None:
        """After the load: wait for the mover, then resume an interrupted move to its end. None if done."""
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        last = ""
        while _active_move():
            if time.monotonic() > deadline:
                return f"a move is still active after {timeout:g} s: {last}"
            result = subprocess.run(  # noqa: S603 - our own command line
                _manage("move_buckets", "--resume", "--cleanup-delay", "1"),
                capture_output=True, text=True, check=False, timeout=timeout,
            )  # fmt: skip
            last = (result.stdout + result.stderr).strip()[-500:]
            self.timeline.record("settle", f"move_buckets --resume: exit {result.returncode}")
            if result.returncode != 0:
                time.sleep(3)
        return None
