"""How long the oldest task message has waited in the broker's queue.

Every message carries the time it was sent (a header stamped when it is published). The
Redis transport pushes at the head of the queue's list and workers take from its tail, so
the tail is the oldest message still waiting, and every message sent before it has already
been taken by a worker. The sweeper uses that to tell a transfer whose trigger is still
queued from one whose trigger was lost.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

SENT_AT_HEADER = "shardwallet_sent_at"


def stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Celery's before_task_publish handler: the message says when it was sent."""
    if headers is not None:
        headers[SENT_AT_HEADER] = time.time()


def oldest_waiting_seconds(client: redis.Redis, queue: str) -> float | None:
    """Seconds the queue's oldest message has waited; None if the queue is empty or that
    message has no stamp (sent by something else, or by a version without it)."""
    raw = client.lindex(queue, -1)
    if raw is None:
        return None
    try:
        sent_at = float(json.loads(raw)["headers"][SENT_AT_HEADER])
    except (ValueError, KeyError, TypeError):
        return None
    return max(0.0, time.time() - sent_at)
