"""Wait on a real condition, with a deadline: never a bare sleep as synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition", every: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy (returned); fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def wait_until_serving(base: str, process: Any, output: Callable[[], str], timeout: float = 60) -> None:
    """Wait until a server started as `process` answers `base`/health; fail with its `output` if it exits."""
    import urllib.request

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):  # noqa: S310 - our own local server
                return True
        except OSError:
            assert process.poll() is None, output()
            return False

    wait_until(answers, timeout, f"{base} to answer", every=0.3)
