"""The move scenario: single requests run while a quarter of the buckets moves to a shard added for it.

Requests whose payer or payee lives in a moving bucket are "touched": their added latency
(against the touched requests' own median before the move) and their errors are reported.
For the others, the throughput dip: their rate in the worst second of the move against
their rate before it.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.load import PhaseLoad, Sent


@dataclass
class MoveRun:
    first: int
    last: int
    target: str
    started_at: float = 0.0
    finished_at: float = 0.0
    output: str = ""
    returncode: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _manage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own manage.py commands
        [sys.executable, "manage.py", *args], capture_output=True, text=True, check=False, timeout=900
    )


def add_shard_and_move(run: MoveRun, *, host: str, port: int, delay: float) -> None:
    """In a thread: wait, add the shard, move the range (each a real management command)."""
    time.sleep(delay)
    run.started_at = time.time()
    added = _manage("shard_add", run.target, "--host", host, "--port", str(port), "--name", "shardwallet")
    moved = _manage("move_buckets", str(run.first), str(run.last), "--to", run.target, "--cleanup-delay", "3")
    run.finished_at = time.time()
    run.returncode = added.returncode or moved.returncode
    run.output = added.stdout + added.stderr + moved.stdout + moved.stderr


def bucket_of(wallet_id: str) -> int:
    return (uuid.UUID(wallet_id).int >> 64) & 0xFFF


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(load: PhaseLoad, run: MoveRun, detail: dict[str, Any]) -> dict[str, Any]:
    def touched(s: Sent) -> bool:
        return any(run.first <= bucket_of(w) <= run.last for w in s.wallets)

    before = [s for s in load.sent if s.submitted < run.started_at]
    during = [s for s in load.sent if run.started_at <= s.submitted <= run.finished_at]
    baseline = statistics.median([s.http_seconds for s in before if touched(s)] or [0.0])
    switch_from = float(detail.get("switch_started_at", run.started_at))
    switch_to = float(detail.get("switched_at", run.finished_at))
    in_switch = [s for s in during if touched(s) and switch_from - 1 <= s.submitted <= switch_to + 1]
    added = [max(0.0, s.http_seconds - baseline) * 1000 for s in in_switch]
    errors: dict[str, int] = {}
    for s in during:
        if s.http_status >= 500 or s.error_code in ("shard_moving", "service_unavailable"):
            errors[f"{s.http_status} {s.error_code}"] = errors.get(f"{s.http_status} {s.error_code}", 0) + 1

    def rate_per_second(sent: list[Sent], start: float, end: float) -> list[int]:
        seconds = max(1, int(end - start))
        counts = [0] * seconds
        for s in sent:
            index = int(s.submitted - start)
            if 0 <= index < seconds:
                counts[index] += 1
        return counts

    untouched_before = rate_per_second([s for s in before if not touched(s)], load.started, run.started_at)
    untouched_during = rate_per_second([s for s in during if not touched(s)], run.started_at, run.finished_at)
    base_rate = statistics.mean(untouched_before[1:] or untouched_before or [0])
    worst = min(untouched_during or [0])
    mean_during = statistics.mean(untouched_during or [0])
    copy_seconds = float(detail.get("phase_seconds", {}).get("copying", 0)) or None
    rows = int(detail.get("rows_copied", 0))
    return {
        "buckets": f"{run.first}..{run.last}",
        "move_seconds": round(run.finished_at - run.started_at, 1),
        "pause_ms_reported_by_mover": round(float(detail.get("pause_seconds", 0)) * 1000),
        "touched_requests_in_switch": len(in_switch),
        "touched_added_latency_ms": {
            "p50": round(_percentile(added, 0.5), 1),
            "p99": round(_percentile(added, 0.99), 1),
            "max": round(max(added or [0.0]), 1),
        },
        "touched_baseline_ms": round(baseline * 1000, 1),
        "errors_during_move": errors,
        "failed_requests_during_move": sum(errors.values()),
        "untouched_per_second_before": round(base_rate, 1),
        "untouched_per_second_during_mean": round(mean_during, 1),
        "untouched_per_second_during_worst": worst,
        "untouched_dip_worst_second": round(1 - worst / base_rate, 3) if base_rate else None,
        "untouched_dip_mean": round(1 - mean_during / base_rate, 3) if base_rate else None,
        "rows_copied": rows,
        "copy_rows_per_second": round(rows / copy_seconds) if copy_seconds else None,
    }


def run_move_phase(
    run_phase: Any, args: Any, key: str, wallets: list[str], *, host: str, port: int, target: str
) -> tuple[PhaseLoad, MoveRun]:
    """The single-request closed loop, with the move started a quarter of the way in."""
    quarter = 1024 // 4
    run = MoveRun(first=0, last=quarter - 1, target=target)
    mover = threading.Thread(
        target=add_shard_and_move, args=(run,), kwargs={"host": host, "port": port, "delay": args.seconds / 4}
    )
    mover.start()
    load = asyncio.run(run_phase(args, key, wallets, "single+move", concurrency=args.concurrency))
    mover.join()
    return load, run
