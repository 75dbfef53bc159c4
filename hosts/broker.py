"""The saga's broker queue, watched from the Redis hosts themselves: how many task messages wait.

A backlog is how the saga's trouble shows from outside: messages are triggers, each one a
worker process must take, and a queue that keeps growing after a fault is over means the
service does not recover on its own. Sampled with `redis-cli` on the host of the server the
sentinels name the master, against its own address (no other host is involved).
"""

from __future__ import annotations

import threading
import time

from hosts import sentinels
from hosts.layout import REDIS

QUEUE = "celery"  # Celery's default queue: every saga task goes there


def queue_length() -> int | None:
    """Messages waiting in the queue on the server the sentinels name the master (from its own host)."""
    on = sentinels.master() or REDIS
    lines = sentinels.redis_cli(on, "llen", QUEUE)
    return int(lines[0]) if lines and lines[0].isdigit() else None


class QueueWatch(threading.Thread):
    """Samples the queue's length every second while a scenario runs."""

    def __init__(self) -> None:
        super().__init__(name="queue-watch", daemon=True)
        self.samples: list[tuple[float, int]] = []  # (wall clock, messages)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(1.0):
            length = queue_length()
            if length is not None:
                self.samples.append((time.time(), length))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)

    @property
    def peak(self) -> int:
        return max((n for _, n in self.samples), default=0)


def wait_drained(timeout: float) -> tuple[float | None, int | None]:
    """Seconds until the queue was empty (None if not within `timeout`), and its length at the end."""
    started = time.monotonic()
    length = queue_length()
    while time.monotonic() - started < timeout:
        if length == 0:
            return round(time.monotonic() - started, 1), 0
        time.sleep(1)
        length = queue_length()
    return None, length
