"""Bucket moves as faults: `manage.py move_buckets` run as operators and crashes would run it.

One move at a time (the service allows no more): a move fault waits for the previous one's
scenario to end. Each fault is one scenario, in turn (the phase chosen from the seed):

- `complete`: a move to its end;
- `kill@PHASE`: the mover is SIGKILLed at a named phase (the service's crash points, so the
  kill is known to have hit a live mover there); the operator resumes the move 5 s later;
- `second-beside-live`: while a mover runs, a second `--resume` and an `--abort` are tried and
  must be refused (naming the live holder), and `shard_add` runs during the move;
- `stopped@PHASE`: the mover stops itself (SIGSTOP) at a phase; an `--abort` beside it must
  be refused; the operator evicts it and aborts (before the switch) or resumes (after); let
  go, the stopped mover must exit saying the move is no longer its own.

Whatever contradicts the ownership rules is a violation (`violations`), failing the run; so
is a move that ends `stopped` or in an error, and a run where no move reached `done`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from chaos.schedule import PlannedFault
from chaos.timeline import Timeline

ROOT = Path(__file__).resolve().parent.parent
SIZES = (16, 32, 64)  # buckets per move
KILL_PHASES = (
    "move_phase_copying", "move_copying", "move_phase_catching_up", "move_phase_verifying", "move_after_fence",
    "move_after_own", "move_phase_cleaning", "move_cleaning_source",
)  # fmt: skip
STOP_PHASES = ("move_copying", "move_phase_verifying", "move_after_fence", "move_after_own")
SWITCHED = ("move_after_own", "move_phase_cleaning", "move_cleaning_source")
SCENARIOS = ("complete", "kill", "second-beside-live", "stopped")
CLEANUP_DELAY = "1"
ABORTING = "aborting"  # apps.sharding.moves.ABORTING
UNREACHABLE = "a database could not be reached"  # move_buckets' words for a shard down mid-step
OPERATOR_DELAY = 5.0  # seconds from a mover's death to the operator's `--resume`


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def _active_move_id() -> int | None:
    from apps.sharding.moves import active_move

    move = active_move()
    return move.id if move is not None else None


def _active_phase() -> str | None:
    from apps.sharding.moves import active_move

    move = active_move()
    return move.phase if move is not None else None


def _holder_pid(move_id: int) -> int | None:
    from apps.sharding.lease import lease_holder

    holder = lease_holder(move_id)
    return holder.pid if holder is not None else None


def _state(pid: int) -> str:
    from apps.sharding.lease import kernel_state

    return kernel_state(pid)


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


def scenario_of(index: int, pick: int) -> tuple[str, str | None]:
    """The index-th move fault's scenario (in turn, so a run with four move faults has each) and its phase."""
    kind = SCENARIOS[index % len(SCENARIOS)]
    if kind == "kill":
        return kind, KILL_PHASES[pick // 4 % len(KILL_PHASES)]
    if kind == "stopped":
        return kind, STOP_PHASES[pick // 4 % len(STOP_PHASES)]
    return kind, None


def _run(argv: list[str], *, timeout: float = 300, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run(  # noqa: S603 - our own command line
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=env, start_new_session=True
    )
    return result.returncode, (result.stdout + result.stderr).strip()


class MoveDriver:
    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.outcomes: Counter[str] = Counter()
        self.violations: list[str] = []
        self._thread: threading.Thread | None = None
        self._started = 0
        self._marker_dir = Path(tempfile.mkdtemp(prefix="chaos-moves-"))

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, fault: PlannedFault, *, wait: float = 240) -> str | None:
        """Start the fault's scenario once the previous one has ended (None: nothing to move)."""
        if self._thread is not None:
            self._thread.join(wait)
            if self._thread.is_alive():
                return None
        kind, phase = scenario_of(self._started, fault.pick)
        if _active_move_id() is not None:
            # A move left by a killed mover: this fault ends it; the scenarios' turn waits.
            command = "--abort" if _active_phase() == ABORTING else "--resume"
            argv, what = _manage("move_buckets", command, "--cleanup-delay", CLEANUP_DELAY), "the interrupted move"
            kind, phase = "complete", None
            self._started -= 1
        else:
            chosen = pick_range(fault.pick, fault.target)
            if chosen is None:
                return None
            first, last = chosen
            argv = _manage(
                "move_buckets", str(first), str(last), "--to", fault.target, "--cleanup-delay", CLEANUP_DELAY
            )
            what = f"buckets {first}..{last} to {fault.target}"
        self._started += 1
        label = kind + (f"@{phase}" if phase else "")
        self._thread = threading.Thread(target=self._scenario, args=(kind, phase, argv, what), daemon=True)
        self._thread.start()
        return f"{label}: {what}"

    def _record(self, message: str) -> None:
        self.timeline.record("fault", f"move_buckets: {message}")

    def _violation(self, message: str) -> None:
        self.violations.append(message)
        self.timeline.record("fault", f"move_buckets VIOLATION: {message}")

    def _scenario(self, kind: str, phase: str | None, argv: list[str], what: str) -> None:
        try:
            if kind == "kill":
                self._killed_at(phase or KILL_PHASES[0], argv, what)
            elif kind == "stopped":
                self._stopped_at(phase or STOP_PHASES[0], argv, what)
            elif kind == "second-beside-live":
                self._second_beside_live(argv, what)
            else:
                self._finish(_run(argv), what)
        except Exception as exc:  # never let the nemesis's helper die with it
            self.outcomes["error"] += 1
            self._violation(f"{what}: the scenario failed: {type(exc).__name__}: {exc}")

    def _finish(self, result: tuple[int, str], what: str) -> None:
        code, output = result
        if code != 0 and UNREACHABLE in output:
            # A shard was down under the mover (another fault): the operator runs it again.
            self._record(f"{what}: a shard was unreachable; the operator runs the move again")
            code, output = self._operator_ends_the_move()
        last = (output.splitlines() or [""])[-1][-300:]
        if code == 0:
            self.outcomes["done" if "done/done" in output else "aborted" if "aborted" in output else "ok"] += 1
            self._record(f"{what}: exit 0: {last}")
            return
        self.outcomes["stopped"] += 1
        self._violation(f"{what}: the mover stopped (exit {code}): {last}")

    def _killed_at(self, phase: str, argv: list[str], what: str) -> None:
        marker = self._marker_dir / f"kill-{time.monotonic_ns()}"
        marker.touch()
        code, output = _run(argv, env={**os.environ, "SHARDWALLET_CRASH_AT": f"{phase}:{marker}"})
        if marker.exists():  # the mover never reached the phase: it ran to its end (or stopped)
            marker.unlink()
            self._record(f"kill@{phase} ({what}): the phase was not reached")
            self._finish((code, output), what)
            return
        if code != -signal.SIGKILL:
            self._violation(f"{what}: killed at {phase} but exited {code}")
            return
        self.outcomes[f"killed@{phase}"] += 1
        self._record(f"{what}: mover SIGKILLed at {phase}")
        # The operator answers the alarm (a fence with no mover stops writes to the range): resume.
        time.sleep(OPERATOR_DELAY)
        self._finish(_run(_manage("move_buckets", "--resume", "--cleanup-delay", CLEANUP_DELAY)), f"{what} (resumed)")

    def _second_beside_live(self, argv: list[str], what: str) -> None:
        argv = [*argv[:-1], "8"]  # a longer clean-up delay: the mover stays alive for the second commands
        proc = subprocess.Popen(  # noqa: S603 - our own command line
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        holder = self._wait_for_holder(proc)
        if holder is not None:
            for command in ("--resume", "--abort"):
                code, output = _run(_manage("move_buckets", command))
                if proc.poll() is not None and "no move is active" in output:
                    self.outcomes["second-after-the-end"] += 1  # the mover had finished first: nothing to refuse
                elif code == 0:
                    self._violation(f"{what}: a second `move_buckets {command}` ran beside live pid {holder}")
                elif "is being run by" not in output:
                    self._violation(
                        f"{what}: `{command}` beside a live mover failed without naming it: {output[-300:]}"
                    )
                else:
                    self.outcomes[f"refused-{command[2:]}-beside-live"] += 1
            target = what.rsplit(" to ", 1)[-1] if " to " in what else None
            if target:
                # Registers the (existing) shard anew: a new epoch while the move takes its own.
                code, output = _run(_manage("shard_add", target))
                self.outcomes["shard_add-during-move" if code == 0 else "shard_add-failed"] += 1
                self._record(f"shard_add {target} during the move: exit {code}: {output[-200:]}")
        output, _ = proc.communicate(timeout=300)
        self._finish((proc.returncode, output.strip()), what)

    def _wait_for_holder(self, proc: subprocess.Popen[str], timeout: float = 30) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            move_id = _active_move_id()
            pid = _holder_pid(move_id) if move_id is not None else None
            if pid == proc.pid:
                return pid
            time.sleep(0.05)
        return None

    def _stopped_at(self, phase: str, argv: list[str], what: str) -> None:
        marker = self._marker_dir / f"stop-{time.monotonic_ns()}"
        marker.touch()
        env = {**os.environ, "SHARDWALLET_STOP_AT": f"{phase}:{marker}"}
        proc = subprocess.Popen(  # noqa: S603 - our own command line
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
        )
        deadline = time.monotonic() + 120
        while _state(proc.pid) != "T" and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is not None or _state(proc.pid) != "T":  # it never reached the phase
            output, _ = proc.communicate(timeout=300)
            self._record(f"stopped@{phase} ({what}): the phase was not reached")
            self._finish((proc.returncode or 0, output.strip()), what)
            return
        self._record(f"{what}: mover stopped (SIGSTOP) at {phase}")
        try:
            code, output = _run(_manage("move_buckets", "--abort"))
            if code == 0:
                self._violation(f"{what}: `--abort` beside a stopped mover (pid {proc.pid}) was accepted")
                return
            self.outcomes["refused-abort-beside-stopped"] += 1
            code, output = _run(_manage("move_buckets", "--evict"))
            if code != 0:
                self._violation(f"{what}: --evict failed: {output[-300:]}")
                return
            second = "--resume" if phase in SWITCHED else "--abort"
            code, output = _run(_manage("move_buckets", second, "--cleanup-delay", CLEANUP_DELAY))
            if code != 0 and second == "--abort" and "has switched" in output:
                code, output = _run(_manage("move_buckets", "--resume", "--cleanup-delay", CLEANUP_DELAY))
            self._finish((code, output), f"{what} ({second} after evicting the stopped mover)")
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            self._violation(f"{what}: the mover let go after eviction did not exit within 60 s")
            return
        if proc.returncode == 0 or "no longer runs the move" not in output:
            self._violation(f"{what}: the evicted mover, let go, exited {proc.returncode}: {output.strip()[-300:]}")
        else:
            self.outcomes["evicted-mover-exited"] += 1

    def _operator_ends_the_move(self, timeout: float = 120) -> tuple[int, str]:
        """What an operator does with an active move: `--abort` one being aborted, `--resume` the
        others, again while a shard is unreachable."""
        deadline = time.monotonic() + timeout
        code, output = 0, "no move is active"
        while _active_move_id() is not None and time.monotonic() < deadline:
            command = "--abort" if _active_phase() == ABORTING else "--resume"
            code, output = _run(_manage("move_buckets", command, "--cleanup-delay", CLEANUP_DELAY))
            if code == 0 or UNREACHABLE not in output:
                return code, output
            time.sleep(3)
        return code, output

    def finish(self, timeout: float = 300) -> str | None:
        """After the load: wait for the scenario, then resume an interrupted move to its end. None if done."""
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        last = ""
        while _active_move_id() is not None:
            if time.monotonic() > deadline:
                return f"a move is still active after {timeout:g} s: {last}"
            command = "--abort" if _active_phase() == ABORTING else "--resume"
            code, last = _run(_manage("move_buckets", command, "--cleanup-delay", "1"), timeout=timeout)
            self.timeline.record("settle", f"move_buckets {command}: exit {code}")
            if code == 0:
                self.outcomes["done"] += 1
            else:
                time.sleep(3)
        return None
