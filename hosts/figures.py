"""Figures from one load: throughput, latency and error counts, overall or per time window and group.

Pure functions over the client's records and the shards' transfer times (both wall clock:
every host shares the machine's clock). Throughput is reported, never asserted by value.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hosts.records import Attempt, LoadResult, Request

# 503 codes that tell the client to send the same key again (apps/common/errors.py).
RETRYABLE_CODES = {"service_unavailable", "shard_moving"}

TransferTimes = dict[str, tuple[str, float, float]]  # id -> (status, created, last updated)


@dataclass(frozen=True)
class Window:
    name: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(self.end - self.start, 1e-9)

    def holds(self, at: float) -> bool:
        return self.start <= at < self.end


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def accepted(request: Request) -> Attempt | None:
    """The attempt that got the transfer accepted (201 or 202), if one did."""
    final = request.final
    return final if final is not None and final.status in (201, 202) and final.transfer_id else None


def status_counts(requests: list[Request], when: Window | None = None) -> dict[str, int]:
    """Every attempt's outcome: `201`, `503 service_unavailable`, `no answer`..."""
    counts: Counter[str] = Counter()
    for request in requests:
        for a in request.attempts:
            if when is not None and not when.holds(a.sent):
                continue
            if a.status is None:
                counts["no answer"] += 1
            elif a.status >= 400:
                counts[f"{a.status} {a.error}"] += 1
            else:
                counts[str(a.status)] += 1
    return dict(sorted(counts.items()))


def latencies(requests: list[Request], when: Window | None = None) -> list[float]:
    """Each accepted attempt's HTTP latency, by when it was sent."""
    found = []
    for request in requests:
        a = accepted(request)
        if a is not None and (when is None or when.holds(a.sent)):
            found.append(a.latency)
    return found


def latency_summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_ms": ms(percentile(values, 50)), "p95_ms": ms(percentile(values, 95))}


def completions(requests: list[Request], times: TransferTimes, when: Window) -> int:
    """Transfers of these requests that completed (on the shards) within the window."""
    done = 0
    for request in requests:
        a = accepted(request)
        row = times.get(a.transfer_id or "") if a is not None else None
        if row is not None and row[0] == "completed" and when.holds(row[2]):
            done += 1
    return done


def throughput(requests: list[Request], times: TransferTimes, when: Window) -> dict[str, Any]:
    accepted_in = sum(1 for r in requests if (a := accepted(r)) is not None and when.holds(a.sent + a.latency))
    completed_in = completions(requests, times, when)
    return {
        "window_s": round(when.seconds, 1),
        "accepted_per_s": round(accepted_in / when.seconds, 1),
        "completed_per_s": round(completed_in / when.seconds, 1),
    }


def overall(result: LoadResult, times: TransferTimes) -> dict[str, Any]:
    """A scenario's headline: transfers, completed/s as `make bench` counts it, latency, errors."""
    transfers = [r for r in result.requests if r.kind == "transfer"]
    ids = [a.transfer_id for r in transfers if (a := accepted(r)) is not None and a.transfer_id]
    rows = [times[i] for i in ids if i in times]
    completed = [row for row in rows if row[0] == "completed"]
    # As `make bench`: completed transfers from the load's start to the last one's terminal time.
    last = max((row[2] for row in completed), default=result.started)
    all_attempts = [a for r in transfers for a in r.attempts]
    return {
        "transfers": len(transfers),
        "accepted": len(ids),
        "completed": len(completed),
        "failed": sum(1 for row in rows if row[0] == "failed"),
        "load_s": round(result.ended - result.started, 1),
        "completed_per_s": round(len(completed) / max(last - result.started, 1e-9), 1),
        "accepted_per_s": round(len(ids) / max(result.ended - result.started, 1e-9), 1),
        "http_latency": latency_summary(latencies(transfers)),
        "attempts": len(all_attempts),
        "retried_keys": sum(1 for r in transfers if len(r.attempts) > 1),
        "http_500": sum(1 for a in all_attempts if a.status == 500),
        "http_503": sum(1 for a in all_attempts if a.status == 503),
        "no_answer": sum(1 for a in all_attempts if a.status is None),
        "statuses": status_counts(transfers),
    }


def bad_answers(requests: list[Request]) -> list[str]:
    """Answers a careful client cannot act on: any 5xx but a 503 with a retryable code."""
    found = []
    for r in requests:
        for a in r.attempts:
            if a.status is not None and a.status >= 500 and not (a.status == 503 and a.error in RETRYABLE_CODES):
                found.append(f"{r.key} ({r.payer_shard}->{r.payee_shard}): {a.status} {a.error}")
    return found


def timed_out(requests: list[Request]) -> list[str]:
    """Attempts the API did not answer within the client's timeout: a request that hung."""
    return [
        f"{r.key} ({r.payer_shard}->{r.payee_shard}) sent at {a.sent:.1f}"
        for r in requests
        for a in r.attempts
        if a.status is None and (a.error or "").startswith("TimeoutError")
    ]


def groups(requests: list[Request], **predicates: Callable[[Request], bool]) -> dict[str, list[Request]]:
    return {name: [r for r in requests if r.kind == "transfer" and keep(r)] for name, keep in predicates.items()}


def completed_between_shards_at(requests: list[Request], times: TransferTimes) -> list[float]:
    """When each completed transfer whose payer and payee are on different shards completed."""
    done = []
    for request in requests:
        a = accepted(request) if request.kind == "transfer" else None
        row = times.get(a.transfer_id or "") if a is not None else None
        if row is not None and row[0] == "completed" and request.payer_shard != request.payee_shard:
            done.append(row[2])
    return done


def completed_between_shards(requests: list[Request], times: TransferTimes) -> int:
    """Completed transfers whose payer and payee are on different shards."""
    return len(completed_between_shards_at(requests, times))
