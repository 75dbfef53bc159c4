"""What happened when: faults, restarts and progress, printed as they happen and kept for the report."""

from __future__ import annotations

import threading
import time
from typing import Any


class Timeline:
    """One clock for the whole run; its zero is the start of the load (setup events are negative)."""

    def __init__(self) -> None:
        self._zero = time.monotonic()
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []

    def mark_zero(self) -> None:
        self._zero = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._zero

    def record(self, kind: str, message: str, **fields: Any) -> None:
        at = round(self.now(), 2)
        with self._lock:
            self.events.append({"at": at, "kind": kind, "message": message, **fields})
            print(f"[{at:7.1f}s] {kind:<10} {message}", flush=True)

    def say(self, message: str) -> None:
        """A progress line: printed, not kept."""
        with self._lock:
            print(f"[{self.now():7.1f}s] {message}", flush=True)
