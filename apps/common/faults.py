"""Crash points for fault-injection tests. Inert unless SHARDWALLET_CRASH_AT is set.

SHARDWALLET_CRASH_AT="<point>:<marker file>" makes the process group die by SIGKILL
at <point>, once: only while the marker file exists (it is removed first). The tests
use it to kill a real Celery worker between two committed saga steps.
"<point>:always" kills it every time it gets there (a step that always kills its worker).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def crash_point(point: str) -> None:
    spec = os.environ.get("SHARDWALLET_CRASH_AT")
    if not spec:
        return
    wanted, _, marker = spec.partition(":")
    if wanted != point or not marker:
        return
    if marker == "always":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    try:
        Path(marker).unlink()
    except FileNotFoundError:
        return
    os.killpg(os.getpgid(0), signal.SIGKILL)
