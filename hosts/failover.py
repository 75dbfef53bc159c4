"""Scenario (d): the replicated shard's primary fails under load, twice, then is switched over.

1. Its postmaster is SIGKILLed. Patroni, still holding the leader key, restarts it in place
   (crash recovery): a pause, no failover, the same timeline.
2. Its host is cut off (its link down, as in (b)). The leader key expires after Patroni's
   TTL; the synchronous standby is promoted; the service's next connections find it through
   the map's `members`, while the old primary is still unreachable. When the link is back,
   Patroni rewinds the old primary and it rejoins as a standby.
3. A planned switchover (maintenance) to the synchronous standby.

Then: no answer but a retryable 503 (the verdict's rule); every transfer the client saw
acknowledged is on the shards (the bank test, which holds each answer to what the shards
say); money is conserved; check_ledger passes. The audit stream continues on the new primary
from its copy of the CDC's slot (Patroni keeps a permanent slot on the standbys), and
reconcile passes. Reported: each fault's write pause, as the client saw it (the longest gap
between two acknowledged transfers paid from the shard), the failover's and the rejoin's
durations.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hosts import app, figures, net
from hosts.figures import Window
from hosts.layout import CLUSTER_SHARD
from hosts.patroni import PatroniMember, postmaster_pid

if TYPE_CHECKING:
    from hosts.cluster import ReplicatedDatabase
    from hosts.scenarios import Outcome, Runner

# For the stream to catch up on the new primary, or to stop loudly. It goes on from the new
# primary's copy of the permanent slot, which Patroni advances on a standby only as fast as the
# standby decodes: after a busy switchover it can be tens of MB behind (64 MB once, re-read for
# over two minutes on this machine), and the store skips what it already has.
CDC_STOP_SECONDS = 360
RESNAPSHOT_SECONDS = 300
REJOIN_SECONDS = 30  # within the time before the switchover (Options.switchover_after)


@dataclass
class Options:
    kill_at: float = 10
    cut_at: float = 40  # after the cluster has a synchronous standby again
    cut_seconds: float = 50  # past Patroni's TTL (20 s) and the promotion, with writes resumed before the link is back
    switchover_after: float = 35  # from the link's return: once the old primary is back as a standby
    after: float = 30  # the switchover must end within it, so that its write pause is measured


@dataclass
class Faults:
    """What happened to the cluster, in wall-clock times (the client's clock)."""

    times: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    cut: PatroniMember | None = None


def write_pause(requests: list[Any], since: float, until: float) -> float | None:
    """The longest gap between two acknowledged (201/202) answers in [since - 1, until), in seconds."""
    answered = sorted(
        a.sent + a.latency for r in requests for a in r.attempts if a.status in (201, 202) and a.transfer_id
    )
    inside = [at for at in answered if since - 1 <= at < until]
    gaps = [b - a for a, b in itertools.pairwise(inside)]
    return round(max(gaps), 1) if gaps else None


def kill_postmaster(runner: Runner, faults: Faults) -> None:
    cluster = runner.stack.cluster
    leader = cluster.settled(timeout=30)
    faults.facts["postmaster_killed_on"] = leader.name
    faults.facts["timeline_before"] = cluster.timeline(leader)
    faults.times["postmaster killed"] = time.time()
    os.kill(postmaster_pid(leader), signal.SIGKILL)


def cut_primary(cluster: ReplicatedDatabase, faults: Faults) -> None:
    # Strict synchronous mode promotes only a settled synchronous standby: cut once there is one.
    leader = cluster.settled(timeout=90)
    faults.facts["after_restart"] = {"leader": leader.name, "timeline": cluster.timeline(leader)}
    faults.cut = leader
    faults.times["primary cut off"] = time.time()
    net.set_link(cluster.host_of(leader), up=False)


def watch_promotion(cluster: ReplicatedDatabase, faults: Faults, seconds: float) -> None:
    """While the old primary is cut off: which standby is promoted, and when (polled each second)."""
    assert faults.cut is not None  # noqa: S101 - cut_primary ran first
    others = [m for m in cluster.members if m is not faults.cut]
    deadline = faults.times["primary cut off"] + seconds
    while time.time() < deadline:
        if "promoted" not in faults.times and (leader := cluster.primary(others)) is not None:
            faults.times["promoted"] = time.time()
            faults.facts["promoted"] = {"member": leader.name, "timeline": cluster.timeline(leader)}
        time.sleep(1)
    faults.times["link back"] = time.time()
    net.set_link(cluster.host_of(faults.cut), up=True)
    # Patroni rewinds the old primary (pg_rewind) and starts it as a standby of the new one.
    timeline = (faults.facts.get("promoted") or {}).get("timeline") or 0
    faults.facts["old_primary_rejoined_as_standby_s"] = cluster.wait_rejoined(faults.cut, timeline, REJOIN_SECONDS)


def switch_over(runner: Runner, faults: Faults) -> None:
    """A planned switchover (maintenance) to the synchronous standby, once every member is back."""
    cluster = runner.stack.cluster
    leader = cluster.settled(timeout=90)
    candidate = cluster.sync_standby(leader)
    if candidate is None:
        raise RuntimeError(f"{CLUSTER_SHARD} has no synchronous standby to switch over to")
    faults.times["switchover"] = time.time()
    answer = cluster.switchover(leader, candidate)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and cluster.primary() is not candidate:
        time.sleep(1)
    faults.times["candidate leads"] = time.time()
    new_leader = cluster.settled(timeout=90)
    faults.times["switched"] = time.time()
    faults.facts["switchover"] = {"from": leader.name, "to": new_leader.name, "timeline": cluster.timeline(new_leader),
                                  "took_s": round(faults.times["switched"] - faults.times["switchover"], 1),
                                  "answer": answer}  # fmt: skip
    if new_leader is not candidate:
        raise RuntimeError(f"the switchover to {candidate.name} did not happen ({answer}); {new_leader.name} leads")


def operators_view(runner: Runner, outcome: Outcome, leader: PatroniMember) -> None:
    """/metrics on the operators' listener names the member Patroni says leads, one primary, and
    a synchronous standby (read through the map's members, by the API's own login). The
    exposition format writes each sample's labels sorted by name."""
    config = runner.stack.config
    assert config is not None  # noqa: S101
    leads = f'shardwallet_db_member_up{{member="{leader.endpoint}",role="primary",server="{CLUSTER_SHARD}"}}'
    wanted = {
        leads: 1,
        f'shardwallet_db_primaries{{server="{CLUSTER_SHARD}"}}': 1,
        f'shardwallet_db_sync_standbys{{server="{CLUSTER_SHARD}"}}': 1,
    }
    deadline = time.monotonic() + 30  # the shard gauges are cached for 10 s
    samples: dict[str, float] = {}
    while time.monotonic() < deadline:
        samples = app.metrics(config)
        if samples.get(leads) == 1:
            break
        time.sleep(3)
    seen = {name: samples.get(name) for name in wanted}
    outcome.figures["metrics"] = seen
    outcome.require(seen == wanted, f"/metrics does not show {leader.name} leading with a synchronous standby: {seen}")


def audit_stream(runner: Runner, outcome: Outcome) -> None:
    """The shard's stream continues on the promoted standby from its copy of the CDC's slot (a
    permanent slot in Patroni). Where it cannot, it must stop loudly: `slot_behind` when the store
    got a change the standby never had (the primary died between sending it and the standby
    having it); the operator's re-snapshot then recovers with the gap recorded."""
    config = runner.stack.config
    assert config is not None  # noqa: S101
    started = time.monotonic()
    deadline = started + CDC_STOP_SECONDS
    stopped = None
    streaming = False
    while time.monotonic() < deadline and stopped is None and not streaming:
        status = app.cdc_status(config)
        shard = ((status.get("cdc") or {}).get("shards") or {}).get(CLUSTER_SHARD) or {}
        if shard.get("stopped"):
            stopped = {"reason": shard["stopped"], "detail": shard.get("stopped_detail", "")[:300]}
        streaming = bool(shard.get("connected")) and shard.get("lag_bytes") == 0
        time.sleep(1)
    outcome.figures["audit_stream"] = {
        "continued": streaming,
        "caught_up_after_checks_began_s": round(time.monotonic() - started, 1) if streaming else None,
        "stopped": stopped,
    }
    outcome.require(
        streaming or stopped is not None, f"the audit stream of {CLUSTER_SHARD} neither caught up nor stopped"
    )
    if stopped is None:
        return
    outcome.require(
        stopped["reason"] == "slot_behind",
        f"the audit stream of {CLUSTER_SHARD} stopped for {stopped['reason']}: its slot did not survive the failover",
    )
    result = app.manage(
        config, "cdc_resnapshot", CLUSTER_SHARD, "--reason", "failover in make test-hosts (d)",
        "--wait", str(RESNAPSHOT_SECONDS), timeout=RESNAPSHOT_SECONDS + 60,
    )  # fmt: skip
    outcome.figures["audit_stream"]["resnapshot"] = (result.stdout + result.stderr).strip()[-300:]
    outcome.require(result.returncode == 0, f"cdc_resnapshot {CLUSTER_SHARD} failed: {result.stderr.strip()[-300:]}")


def scenario(runner: Runner, outcome: Outcome, options: Options) -> None:
    faults = Faults()
    cluster = runner.stack.cluster
    actions = [
        (5, "sockets looked at", runner.socket_check(outcome)),
        (options.kill_at, f"{CLUSTER_SHARD}'s primary: postmaster SIGKILLed", lambda: kill_postmaster(runner, faults)),
        (options.cut_at, f"{CLUSTER_SHARD}'s primary: host cut off", lambda: cut_primary(cluster, faults)),
        (
            options.cut_at + 1,
            f"{CLUSTER_SHARD}: promotion watched, then the old primary's link up",
            lambda: watch_promotion(cluster, faults, options.cut_seconds),
        ),
        (
            options.cut_at + options.cut_seconds + options.switchover_after,
            f"{CLUSTER_SHARD}: planned switchover",
            lambda: switch_over(runner, faults),
        ),
    ]
    seconds = options.cut_at + options.cut_seconds + options.switchover_after + options.after
    result = runner.load("d", seconds, actions)
    outcome.require(
        faults.facts.get("old_primary_rejoined_as_standby_s") is not None,
        f"the old primary {faults.cut and faults.cut.name} did not rejoin as a standby within {REJOIN_SECONDS} s",
    )
    leader = cluster.settled(timeout=120)
    faults.facts["leader_at_end"] = leader.name
    operators_view(runner, outcome, leader)
    audit_stream(runner, outcome)
    checks = runner.check("d", settle=90, reconcile=True)
    times = checks["transfers"]
    outcome.figures["load"] = figures.overall(result, times)
    payers = figures.groups(result.requests, payer_on_it=lambda r: r.payer_shard == CLUSTER_SHARD)["payer_on_it"]
    killed, cut, back, switched, switch_done = (
        faults.times.get(k)
        for k in ("postmaster killed", "primary cut off", "link back", "switchover", "candidate leads")
    )
    promoted = faults.times.get("promoted")
    outcome.figures["cluster"] = faults.facts | {
        "promoted_after_cut_s": round(promoted - cut, 1) if promoted and cut else None,
    }
    if killed and cut and back:
        outcome.figures["write_pause_s"] = {
            "postmaster_kill": write_pause(payers, killed, cut),
            "host_cut_off": write_pause(payers, cut, back),
            "switchover": write_pause(payers, switched, result.ended) if switched else None,
        }
        after_kill = figures.completions(payers, times, Window("after the restart", killed + 1, cut))
        outcome.require(after_kill > 0, "no transfer paid from the shard completed after its postmaster restarted")
    outcome.require("switched" in faults.times, f"the planned switchover of {CLUSTER_SHARD} did not happen")
    outcome.require(
        switched is None or switched < result.ended - 10,
        f"the switchover started {switched and round(result.ended - switched, 1)} s before the load's end: too late",
    )
    # A switchover whose candidate led only after the load ended has an unmeasured write pause (a
    # clean stop that waited 50-60 s for the CDC once reported 0.2 s): not a result.
    outcome.require(
        switch_done is None or switch_done < result.ended,
        f"the switchover's candidate led {switch_done and round(switch_done - result.ended, 1)} s after the"
        " load's end: its write pause is not measured",
    )
    outcome.require(
        faults.cut is not None and promoted is not None,
        f"no standby of {CLUSTER_SHARD} was promoted while its primary was cut off",
    )
    if promoted and back:
        # The failover proven by the service itself: writes on the new primary while the old one is unreachable.
        during = figures.completions(payers, times, Window("promoted, old primary cut off", promoted, back))
        outcome.figures["completed_on_the_new_primary_while_the_old_was_cut_off"] = during
        outcome.require(during > 0, "no transfer paid from the shard completed on the promoted standby")
    runner.verdict(outcome, checks, result)
