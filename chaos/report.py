"""The run's summary on the terminal, its report as JSON and its full history as JSON lines."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from chaos.checks import MAX_LISTED, Verdict
from chaos.history import History


def _counts(counter: Counter[str] | dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


def summary(document: dict[str, Any], verdict: Verdict) -> str:
    d = document
    requests: dict[str, int] = d["requests"]
    by_outcome: Counter[str] = Counter()
    for name, n in requests.items():
        outcome = name.rsplit(" ", 1)[-1] if "no answer" not in name else "no answer"
        by_outcome["5xx" if outcome.startswith("5") else outcome] += n
    counts = verdict.counts
    lines = [
        "",
        f"chaos run, seed {d['seed']}: {d['options']['duration']:g} s of load with faults,"
        f" {d['settle_seconds']:.0f} s to settle, {d['options']['shards']} shards"
        f" ({d['elapsed_seconds']:.0f} s in all)",
        f"  faults injected ({sum(d['faults'].values())}): {_counts(d['faults'])}",
    ]
    if d["faults_skipped"]:
        lines.append(f"  faults skipped (target down at the time): {_counts(d['faults_skipped'])}")
    lines += [
        f"  restarts by the supervisor: {_counts(d['restarts'])}",
        f"  requests: {sum(requests.values())} ({_counts(by_outcome)})",
        f"  keys: {_counts(counts.get('ops', {}))}; {counts.get('keys_retried', 0)} sent more than once,"
        f" {counts.get('keys_answered_more_than_once', 0)} answered with a transfer more than once,"
        f" {counts.get('replays_seen', 0)} replays",
        f"  transfers checked: {counts.get('transfers_checked', 0)}, {counts.get('cross_shard_transfers', 0)} of them"
        f" between shards ({_counts(counts.get('transfers', {}))})",
        f"  holds: {_counts(counts.get('holds', {}))}",
        f"  refunds: {_counts(counts.get('refunds', {}))}",
    ]
    for currency, money in sorted(counts.get("money", {}).items()):
        lines.append(
            f"  money {currency}: balances {money.get('balances', 0)} + held {money.get('held', 0)}"
            f" = deposits {money.get('deposits', 0)} - withdrawals {money.get('withdrawals', 0)}"
        )
    if d["saga_metrics"]:
        saga = {k.removeprefix("shardwallet_"): int(v) for k, v in d["saga_metrics"].items()}
        lines.append(f"  saga counters: {_counts(saga)}")
    for promotion in d.get("promotions", []):
        took = f"{promotion['to']} leads {promotion['seconds']} s after" if promotion["to"] else "NO member took over"
        lines.append(f"  primary kill on {promotion['shard']}: {promotion['from']}'s host down; {took}")
    cdc = d["cdc_caught_up_after_seconds"]
    lines.append(f"  audit stream: {'caught up after ' + str(cdc) + ' s' if cdc is not None else 'did NOT catch up'}")
    for name, result in d["commands"].items():
        lines.append(f"  {name}: {'OK' if result['ok'] else 'FAILED'}")
    if verdict.ok:
        lines.append("  violations: none")
    else:
        lines.append("  VIOLATIONS:")
        for check, messages in verdict.violations.items():
            lines.append(f"    {check}: {len(messages)}")
            lines += ["      - " + m.replace("\n", "\n        ") for m in messages[:MAX_LISTED]]
            if len(messages) > MAX_LISTED:
                lines.append(f"      ... and {len(messages) - MAX_LISTED} more (see the JSON report)")
    lines.append(f"seed {d['seed']}: {'PASS' if verdict.ok else 'FAIL'}")
    return "\n".join(lines)


def write(directory: Path, document: dict[str, Any], history: History) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    report = directory / f"report-{document['seed']}.json"
    report.write_text(json.dumps(document, indent=2, default=str))
    ops = directory / f"history-{document['seed']}.jsonl"
    with ops.open("w") as out:
        for op in history.ops:
            out.write(json.dumps(op.as_dict()) + "\n")
    return report, ops
