"""Figures from a phase: throughput, latency percentiles, failures; a table, JSON and a PNG."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.load import PhaseLoad


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


@dataclass
class PhaseResult:
    name: str
    requests: int
    accepted: int
    rejected: dict[str, int]
    completed: int
    failed_by_reason: dict[str, int]
    accepted_per_second: float
    completed_per_second: float
    http_latency_ms: dict[str, float]
    api_latency_ms: dict[str, float]  # the API's own time per request (Server-Timing), queueing excluded
    terminal_latency_ms: dict[str, float]
    retries: int
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    # Where the slowest 1% (by submit-to-terminal) spent their time, mean ms per segment.
    slowest: dict[str, float] = field(default_factory=dict)
    completions_per_second_series: list[int] = field(default_factory=list)


def slowest_segments(
    load: PhaseLoad,
    terminal: dict[str, tuple[str, str | None, float, int]],
    steps: dict[str, tuple[float, float | None]],
    share: float = 0.01,
) -> dict[str, float]:
    """For the slowest `share` of accepted transfers: mean ms from the client's send to the
    first step (HTTP queueing and the API), from there to the start of the drain run that
    credited the payee (cross-shard: the hand-off; a drain stamps its credits with its start),
    and from then (or the first step) to the terminal state (the drain's run: completions are
    stamped when they happen); and the share of them that were cross-shard."""
    timed = [
        (terminal[s.transfer_id][2] - s.submitted, s.submitted, *steps[s.transfer_id], terminal[s.transfer_id][2])
        for s in load.accepted
        if s.transfer_id in terminal and s.transfer_id in steps
    ]
    if not timed:
        return {}
    timed.sort(reverse=True)
    slow = timed[: max(1, int(len(timed) * share))]
    to_first = [(first - sent) * 1000 for _, sent, first, _, _ in slow]
    to_credit = [(credit - first) * 1000 for _, _, first, credit, _ in slow if credit is not None]
    to_end = [(end - (credit if credit is not None else first)) * 1000 for _, _, first, credit, end in slow]
    return {
        "transfers": len(slow),
        "total_ms": mean([t * 1000 for t, *_ in slow]),
        "send_to_first_step_ms": mean(to_first),
        "first_step_to_credit_ms": mean(to_credit),
        "credit_to_terminal_ms": mean(to_end),
        "cross_shard_share": len(to_credit) / len(slow),
    }


def summarize(
    load: PhaseLoad,
    terminal: dict[str, tuple[str, str | None, float, int]],
    steps: dict[str, tuple[float, float | None]] | None = None,
) -> PhaseResult:
    """`terminal`: transfer id -> (status, reason, terminal wall time, attempts), read from the
    shards; `steps`: transfer id -> (first step's time, payee credit's time or None)."""
    accepted = load.accepted
    submit_window = max(load.ended - load.started, 1e-9)
    statuses = Counter(terminal[s.transfer_id][0] for s in accepted if s.transfer_id in terminal)
    reasons = Counter(terminal[s.transfer_id][1] for s in accepted if terminal.get(s.transfer_id, ("",))[0] == "failed")
    finished_at = [terminal[s.transfer_id][2] for s in accepted if s.transfer_id in terminal]
    completed_window = max((max(finished_at) if finished_at else load.ended) - load.started, 1e-9)
    terminal_latencies = [
        max(0.0, terminal[s.transfer_id][2] - s.submitted) * 1000 for s in accepted if s.transfer_id in terminal
    ]
    series = Counter(int(t - load.started) for t in finished_at)
    return PhaseResult(
        name=load.name,
        requests=load.requests,
        accepted=len(accepted),
        rejected=dict(Counter(s.error_code or str(s.http_status) for s in load.sent if s.transfer_id is None)),
        completed=statuses.get("completed", 0),
        failed_by_reason=dict(reasons),
        accepted_per_second=len(accepted) / submit_window,
        completed_per_second=statuses.get("completed", 0) / completed_window,
        http_latency_ms=percentiles([s.http_seconds * 1000 for s in load.sent]),
        api_latency_ms=percentiles(load.api_times_ms()),
        terminal_latency_ms=percentiles(terminal_latencies),
        # attempts counts every run of the saga's steps, the first included (a drain's claim)
        retries=sum(max(terminal[s.transfer_id][3] - 1, 0) for s in accepted if s.transfer_id in terminal),
        completions_per_second_series=[series.get(i, 0) for i in range(max(series, default=-1) + 1)],
        slowest=slowest_segments(load, terminal, steps or {}),
    )


@dataclass(frozen=True)
class Ceilings:
    """Transfers/s the plain SQL allows: one transfer per transaction (single requests are
    measured against it) and N per transaction, set-based (batches are)."""

    per_transfer: float
    set_based: float | None = None

    def for_phase(self, name: str) -> tuple[str, float]:
        if name.startswith("batch") and self.set_based:
            return "set-based", self.set_based
        return "per-transfer", self.per_transfer


def table(results: list[PhaseResult], ceilings: Ceilings) -> str:
    lines = [
        f"{'phase':<14}{'accepted/s':>11}{'completed/s':>12}{'ratio':>7}{'http p50':>9}{'p99':>7}"
        f"{'api p50':>8}{'p99':>7}{'term p50':>9}{'p95':>7}{'p99':>7}{'max':>7}{'failed':>8}{'retries':>8}",
    ]
    for r in results:
        t, h, a = r.terminal_latency_ms, r.http_latency_ms, r.api_latency_ms
        _, ceiling = ceilings.for_phase(r.name)
        lines.append(
            f"{r.name:<14}{r.accepted_per_second:>11.0f}{r.completed_per_second:>12.0f}"
            f"{r.completed_per_second / ceiling:>7.2f}{h['p50']:>9.1f}{h['p99']:>7.1f}{a['p50']:>8.1f}{a['p99']:>7.1f}"
            f"{t['p50']:>9.1f}{t['p95']:>7.1f}{t['p99']:>7.1f}{t['max']:>7.0f}"
            f"{sum(r.failed_by_reason.values()):>8}{r.retries:>8}"
        )
    set_based = f"{ceilings.set_based:.0f}/s" if ceilings.set_based else "not measured"
    lines.append(
        "(latencies in ms; api = the API's own time per request, from its Server-Timing header;\n"
        f" ratio = completed/s over the raw-SQL ceiling: per-transfer {ceilings.per_transfer:.0f}/s"
        f" for single requests, set-based {set_based} for batches)"
    )
    return "\n".join(lines)


def cpu_table(results: list[PhaseResult]) -> str:
    kinds = sorted({k for r in results for k in r.cpu_seconds})
    lines = [f"{'CPU seconds':<14}" + "".join(f"{k:>10}" for k in kinds)]
    for r in results:
        lines.append(f"{r.name:<14}" + "".join(f"{r.cpu_seconds.get(k, 0):>10.1f}" for k in kinds))
    return "\n".join(lines)


def cpu_per_transfer_table(results: list[PhaseResult]) -> str:
    """CPU milliseconds per completed transfer, by component: what survives this machine's
    noise, and what a deployment multiplies by its rate."""
    kinds = sorted({k for r in results for k in r.cpu_seconds})
    lines = [f"{'CPU ms/transfer':<16}" + "".join(f"{k:>10}" for k in kinds) + f"{'all':>10}"]
    for r in results:
        done = max(r.completed, 1)
        per = {k: r.cpu_seconds.get(k, 0) * 1000 / done for k in kinds}
        lines.append(f"{r.name:<16}" + "".join(f"{per[k]:>10.2f}" for k in kinds) + f"{sum(per.values()):>10.2f}")
    return "\n".join(lines)


def slowest_table(results: list[PhaseResult]) -> str:
    lines = [
        f"{'slowest 1%':<14}{'n':>6}{'mean ms':>9}{'send->1st':>11}{'1st->credit':>13}{'->terminal':>12}{'x-shard':>9}"
    ]
    for r in results:
        w = r.slowest
        if not w:
            continue
        lines.append(
            f"{r.name:<14}{w['transfers']:>6.0f}{w['total_ms']:>9.1f}{w['send_to_first_step_ms']:>11.1f}"
            f"{w['first_step_to_credit_ms']:>13.1f}{w['credit_to_terminal_ms']:>12.1f}{w['cross_shard_share']:>9.0%}"
        )
    lines.append("(send->1st: HTTP queueing and the API; 1st->credit: until the drain run that credited it started")
    lines.append(" (cross-shard only: the hand-off); ->terminal: from there, or the first step, to completed/failed)")
    return "\n".join(lines)


def write_outputs(directory: Path, document: dict[str, Any], results: list[PhaseResult]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")  # noqa: DTZ005 - a local file name
    json_path = directory / f"bench-{stamp}.json"
    document = {**document, "phases": [asdict(r) for r in results]}
    json_path.write_text(json.dumps(document, indent=2))
    png_path = directory / f"bench-{stamp}.png"
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for r in results:
        left.plot(range(len(r.completions_per_second_series)), r.completions_per_second_series, label=r.name)
    left.axhline(document["ceiling"]["transfers_per_second"], linestyle="--", color="grey", label="raw-SQL ceiling")
    left.set_xlabel("seconds since phase start")
    left.set_ylabel("transfers completed per second")
    left.set_title("Throughput over time")
    left.legend()
    for i, r in enumerate(results):
        values = r.terminal_latency_ms
        right.bar(r.name, values["p99"], color=f"C{i}", alpha=0.35)
        right.bar(r.name, values["p50"], color=f"C{i}", alpha=0.95)
    right.set_ylabel("submit-to-terminal latency (ms)")
    right.set_title("Latency: p50 (dark) and p99 (light)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return json_path, png_path


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0
