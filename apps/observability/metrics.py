"""Prometheus metrics recorded in process.

gunicorn and Celery run several processes, so when PROMETHEUS_MULTIPROC_DIR is set (serve
and the test suite set it) every process writes its samples to files there and /metrics
sums them. Counters and histograms only: what is better read from the shards (transfers
by status, parked and stalled counts) is computed at scrape time (`collectors.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram

F = TypeVar("F", bound=Callable[..., Any])

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

TRANSFER_TRANSITIONS = Counter(
    "shardwallet_transfer_transitions_total",
    "Committed transfer status transitions, by new status and failure reason.",
    ["status", "reason"],
)
SAGA_STEP_SECONDS = Histogram(
    "shardwallet_saga_step_seconds",
    "Duration of one saga step (one single-shard transaction), by step and outcome.",
    ["step", "outcome"],
    buckets=_LATENCY_BUCKETS,
)
SAGA_RETRIES = Counter(
    "shardwallet_saga_retries_total", "Saga runs retried after a transient error, by error type.", ["error"]
)
DRAINED_TRANSFERS = Counter(
    "shardwallet_drained_transfers_total",
    "Transfers taken by a shard drain, by what became of them (completed in the batch, or left to run one by one).",
    ["outcome"],
)
SAGA_PARKED = Counter("shardwallet_saga_parked_total", "Transfers parked after their retries ran out.")
SAGA_MOVE_WAITS = Counter(
    "shardwallet_saga_move_waits_total",
    "Saga runs that waited out a bucket move's fence (not counted as attempts: a fence never parks).",
)
SWEEPER_REDRIVEN = Counter("shardwallet_sweeper_redriven_total", "Stalled transfers re-enqueued by the sweeper.")
SWEEPER_DEFERRED = Counter(
    "shardwallet_sweeper_deferred_total",
    "Sweeps that re-drove only long-stalled transfers because the broker held a backlog.",
)
HTTP_REQUEST_SECONDS = Histogram(
    "shardwallet_http_request_seconds",
    "HTTP request latency, by method, route pattern and status code.",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
)
CDC_ORIGIN_TRANSACTIONS_SKIPPED = Counter(
    "shardwallet_cdc_origin_transactions_skipped_total",
    "Transactions the audit stream left out because they carry a replication origin (a bucket move's copy"
    " into the target, its clean-up of the source), by shard.",
    ["shard"],
)
DB_ERRORS = Counter(
    "shardwallet_db_errors_total",
    "Database errors per database alias (shard_NN or default), by error type.",
    ["database", "error"],
)


@contextmanager
def time_saga_step(step: str) -> Iterator[None]:
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    finally:
        SAGA_STEP_SECONDS.labels(step=step, outcome=outcome).observe(time.perf_counter() - started)


def timed_saga_step(step: str) -> Callable[[F], F]:
    """Decorator: observe the wrapped saga step's duration in shardwallet_saga_step_seconds."""

    def decorate(func: F) -> F:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with time_saga_step(step):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def count_transition(status: str, reason: str | None, count: int = 1) -> None:
    TRANSFER_TRANSITIONS.labels(status=status, reason=reason or "").inc(count)
