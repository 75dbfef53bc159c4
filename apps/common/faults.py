"""Crash points for fault-injection tests. Inert unless SHARDWALLET_CRASH_AT is set.

SHARDWALLET_CRASH_AT="<point>:<marker file>" makes the process group die by SIGKILL
at <point>, once: only while the marker file exists (it is removed first). The tests
use it to kill a real Celery worker between two committed saga steps.
"<point>:always" kills it every time it gets there (a step that always kills its worker).

SHARDWALLET_STOP_AT="<point>:<marker file>" instead stops the process itself by SIGSTOP
there, once (a process that hangs: it keeps its connections, locks and leases until a
SIGCONT or a kill).

SHARDWALLET_HOLD_AT="<point>:<marker file>" makes the process wait there, alive, for as long
as the marker file exists (a slow step: the process runs, its lease is held; the test
removes the file to let it go on; `<marker file>.held` appears when it gets there).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _claim(spec: str, point: str) -> bool:
    """True once for `point` while the spec's marker file exists (it is removed)."""
    wanted, _, marker = spec.partition(":")
    if wanted != point or not marker:
        return False
    try:
        Path(marker).unlink()
    except FileNotFoundError:
        return False
    return True


def crash_point(point: str) -> None:
    hold = os.environ.get("SHARDWALLET_HOLD_AT")
    if hold:
        wanted, _, marker = hold.partition(":")
        if wanted == point and marker and Path(marker).exists():
            Path(f"{marker}.held").touch()  # the test's sign that the process got here
            while Path(marker).exists():
                time.sleep(0.05)
    stop = os.environ.get("SHARDWALLET_STOP_AT")
    if stop and _claim(stop, point):
        os.kill(os.getpid(), signal.SIGSTOP)
    spec = os.environ.get("SHARDWALLET_CRASH_AT")
    if not spec:
        return
    if spec == f"{point}:always" or _claim(spec, point):
        os.killpg(os.getpgid(0), signal.SIGKILL)
