"""The run's report: a few lines per scenario on the terminal, everything in var/hosts/report.json."""

from __future__ import annotations

import json
from typing import Any

from hosts.layout import CLUSTER_SHARD, PARTITIONED_SHARD, REPORT, SLOW_SHARD, relative
from hosts.scenarios import Outcome


def _load_line(load: dict[str, Any]) -> str:
    latency = load["http_latency"]
    return (
        f"  {load['transfers']} transfers in {load['load_s']:g} s: {load['completed_per_s']} completed/s"
        f" ({load['accepted_per_s']} accepted/s), HTTP p50 {latency['p50_ms']} ms, p95 {latency['p95_ms']} ms;"
        f" {load['http_503']} x 503, {load['http_500']} x 500, {load['no_answer']} unanswered,"
        f" {load['retried_keys']} keys retried"
    )


def lines(outcome: Outcome) -> list[str]:
    f = outcome.figures
    title = {
        "a": "(a) random transfers across shards",
        "b": f"(b) {PARTITIONED_SHARD}'s link down during the load",
        "c": f"(c) slow link to {SLOW_SHARD}",
        "d": f"(d) {CLUSTER_SHARD}'s primary killed, then cut off",
        "e": "(e) the control database's primary cut off",
        "f": "(f) Redis's master cut off",
    }.get(outcome.name, outcome.name)
    out = [f"{title}: {'PASS' if outcome.ok else 'FAIL'}"]
    if "load" in f:
        out.append(_load_line(f["load"]))
    if "partition" in f:
        for group, row in f["partition"].items():
            cells = ", ".join(f"{w} {row[w]['completed_per_s']}/s" for w in ("before", "during", "after"))
            out.append(f"  {group}: completed {cells}; answers during: {row['during_statuses'] or 'none'}")
        out.append(
            f"  untouched transfers' completions during the partition: {f['untouched_ratio_during_vs_before']:.0%}"
            f" of before; touching {PARTITIONED_SHARD}: {f.get('outcomes_touching_it')},"
            f" all terminal {f.get('terminal_after_link_up_s')} s after the link came back"
        )
        refused = f["503_latency"]
        out.append(f"  its 503s took p50 {refused['p50_ms']} ms, max {refused['max_ms']} ms ({refused['n']})")
    if "latency" in f:
        for group, row in f["latency"].items():
            out.append(
                f"  {group}: p50 {row['fast']['p50_ms']} -> {row['slow']['p50_ms']} ms"
                f" (x{f['p50_rise'][group]}), p95 {row['fast']['p95_ms']} -> {row['slow']['p95_ms']} ms"
            )
    if "payers_latency" in f:
        out.append(
            "  payers' HTTP latency: "
            + "; ".join(f"{name} p50 {v['p50_ms']} ms, p95 {v['p95_ms']} ms" for name, v in f["payers_latency"].items())
        )
    if "cluster" in f:
        cluster, pause = f["cluster"], f.get("write_pause_s", {})
        promoted = cluster.get("promoted") or {}
        out.append(
            f"  postmaster SIGKILL on {cluster.get('postmaster_killed_on')}: restarted in place"
            f" ({cluster.get('after_restart')}), writes paused {pause.get('postmaster_kill')} s"
        )
        out.append(
            f"  host cut off: {promoted.get('member')} promoted {cluster.get('promoted_after_cut_s')} s after"
            f" (timeline {promoted.get('timeline')}), writes paused {pause.get('host_cut_off')} s,"
            f" {f.get('completed_on_the_new_primary_while_the_old_was_cut_off')} completed on it while the old was cut"
            f" off; the old primary rejoined as a standby {cluster.get('old_primary_rejoined_as_standby_s')} s after"
            " its link came back"
        )
        out.append(f"  planned switchover {cluster.get('switchover')}: writes paused {pause.get('switchover')} s")
    if "control" in f:
        control = f["control"]
        out.append(
            f"  {(control.get('promoted') or {}).get('member')} promoted {control.get('promoted_after_cut_s')} s after"
            f" the cut, writes paused {control.get('write_pause_s')} s; the old primary rejoined as a standby"
            f" {control.get('old_primary_rejoined_as_standby_s')} s after its link came back"
        )
    if "redis" in f:
        redis = f["redis"]
        out.append(
            f"  Redis master {redis.get('master_before')} cut off: the sentinels promoted the replica"
            f" {redis.get('promoted_after_cut_s')} s after, which served {redis.get('new_master_calls_while_cut_off')}"
            f" while the old was cut off; longest gap between completions across shards"
            f" {redis.get('completion_gap_s')} s; the old master followed the new"
            f" {redis.get('old_master_follows_after_s')} s after its link came back"
        )
    if "audit_stream" in f:
        out.append(f"  audit stream: {f['audit_stream']}")
    if "broker_queue" in f:
        queue = f["broker_queue"]
        out.append(
            f"  broker queue: peak {queue['peak']} messages, empty {queue['drained_after_checks_s']} s after the checks"
        )
    if "checks" in f:
        out.append("  checks: " + ", ".join(f"{k} {v}" for k, v in f["checks"].items()))
    if "connections" in f:
        out.append("  connections: " + ", ".join(f"{k} {v}" for k, v in f["connections"].items()))
    out += [f"  FAILED: {message}" for message in outcome.failures]
    return out


def write(document: dict[str, Any]) -> str:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(document, indent=2, default=str))
    return relative(REPORT)
