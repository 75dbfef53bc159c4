"""A saga worker's readiness, for orchestrators: a file the worker touches while it consumes.

Celery's own `inspect ping` goes through the broker and waits for replies: seconds per probe,
and it says nothing about a worker whose broker connection is gone. Instead, a step of the
worker's consumer touches `<DEVSTACK_DIR>/worker-ready/<node name>` every few seconds while
its broker connection is up, and removes it when the consumer stops (a lost connection
restarts the consumer), and skips a beat when the broker does not answer a ping.
`manage.py worker_ready` says whether such a file is fresh.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import redis
from celery import bootsteps
from django.conf import settings

from apps.common.redis_client import redis_client

BEAT_SECONDS = 5.0
FRESH_SECONDS = 4 * BEAT_SECONDS


def ready_dir() -> Path:
    return Path(settings.DEVSTACK_DIR) / "worker-ready"


class ReadinessBeat(bootsteps.StartStopStep):
    """Added to the consumer's blueprint: started once the worker consumes tasks."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_ref: Any = None
        self.path: Path | None = None
        self.ping_client: redis.Redis | None = None

    def start(self, consumer: Any) -> None:
        self.path = ready_dir() / consumer.hostname
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._beat(consumer)
        self.timer_ref = consumer.timer.call_repeatedly(BEAT_SECONDS, self._beat, (consumer,), priority=10)

    def _beat(self, consumer: Any) -> None:
        connection = consumer.connection
        if self.path is None or connection is None or not connection.connected:
            return
        # kombu's `connected` says only that the connection was not closed: a broker cut off
        # by the network is noticed by asking it, on a client of its own with a short timeout.
        try:
            self._broker().ping()
        except redis.RedisError:
            return
        self.path.touch()

    def _broker(self) -> redis.Redis:
        if self.ping_client is None:
            self.ping_client = redis_client(timeout=1)
        return self.ping_client

    def stop(self, consumer: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def shutdown(self, consumer: Any) -> None:
        self.stop(consumer)


def fresh_workers(name: str | None = None, now: float | None = None) -> tuple[list[str], list[str]]:
    """(ready, stale) node names on this host; only `name` when given."""
    now = time.time() if now is None else now
    ready: list[str] = []
    stale: list[str] = []
    for path in sorted(ready_dir().glob("*")) if ready_dir().exists() else []:
        if name is not None and path.name != name:
            continue
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        (ready if age <= FRESH_SECONDS else stale).append(path.name)
    return ready, stale
