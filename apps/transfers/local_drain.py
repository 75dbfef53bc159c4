"""Drains run inside the API process (SHARDWALLET_DRAIN_IN_API), one thread per payer shard.

A request that leaves transfers `debited` wakes its shard's thread instead of sending a
Celery message: the drain starts at once (no broker hop, no wait for a free worker) and
still credits and completes many transfers per transaction. What a drain leaves over (a
refusal, a race) goes to the workers, each transfer in its own task, so the thread is never
held up by one transfer's step. Requests that arrive while it
runs make it run again when it ends, so nothing waits for a next trigger. It is the same
drain as the Celery task's (`tasks.drain_shard`); if it fails, the shard is handed to a
Celery drain. The database stays the source of truth: a process that dies mid-drain leaves
its claimed transfers to the sweeper, as a dead worker does.
"""

from __future__ import annotations

import logging
import threading

from django.db import connections

log = logging.getLogger(__name__)


class ShardDrainer:
    """One daemon thread draining one payer shard whenever it is woken."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._wanted = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"drain-{alias}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wanted.set()

    def _loop(self) -> None:
        from apps.transfers.tasks import drain_shard, request_drain

        while True:
            self._wanted.wait()
            self._wanted.clear()  # a wake from here on runs the drain again
            try:
                drain_shard(self.alias, left_overs_here=False)
            except Exception:
                log.warning("in-process drain failed; handed to a worker", extra={"shard": self.alias}, exc_info=True)
                for connection in connections.all(initialized_only=True):
                    connection.close()  # this thread's: a broken one must not serve the next drain
                request_drain(self.alias)


_drainers: dict[str, ShardDrainer] = {}
_lock = threading.Lock()


def wake(alias: str) -> None:
    """Start (or re-run) the drain of `alias` in this process."""
    drainer = _drainers.get(alias)
    if drainer is None:
        with _lock:  # one thread per shard, however many requests ask at once
            if alias not in _drainers:
                _drainers[alias] = ShardDrainer(alias)
            drainer = _drainers[alias]
    drainer.wake()
