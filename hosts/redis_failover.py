"""Scenario (f): the broker's Redis master is cut off under load (Redis Sentinel).

The master's host loses its link (its server and its sentinel with it). The two other
sentinels agree it is down after `down-after-milliseconds` (5 s) and promote the replica; the
API, the workers and beat find it through the sentinels without a restart (the broker's
sockets time out, so nothing waits on the dead connections). When the link is back, the
sentinels make the old master a replica of the new one.

Messages are triggers, never the truth: a task message the old master held and had not yet
replicated is lost, and the sweeper re-drives its transfer. Then, as in every scenario: no
answer but a retryable 503; every acknowledged transfer on the shards; money conserved;
check_ledger passes; the queue (on the new master) drains; and the promoted replica served the
app's publishes and the workers' takes while the old master was unreachable. Reported: when
the sentinels promoted the replica, what it served, the longest gap between two completions of
transfers between shards while the master was cut off, and when the old master followed.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hosts import figures, net, sentinels
from hosts.figures import Window
from hosts.layout import REDIS, REDIS_B, Host

if TYPE_CHECKING:
    from hosts.scenarios import Outcome, Runner

FOLLOW_SECONDS = 60  # for the old master to replicate from the new one once its link is back


@dataclass
class Options:
    cut_at: float = 15
    cut_seconds: float = 40  # past down-after-milliseconds (5 s) and the promotion, with work resumed before
    after: float = 30  # for the old master to follow and the service to settle


@dataclass
class Faults:
    times: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def cut_master(faults: Faults) -> None:
    faults.facts["master_before"] = (sentinels.master() or REDIS).name
    faults.times["master cut off"] = time.time()
    net.set_link(REDIS, up=False)


def watch_promotion(faults: Faults, seconds: float) -> None:
    """While the master is cut off: when the replica says it is the master and the sentinels
    (a majority) name it; then the link back, and the old master following the new one."""
    deadline = faults.times["master cut off"] + seconds
    at_promotion: dict[str, int] = {}
    while time.time() < deadline:
        if "promoted" not in faults.times and sentinels.role(REDIS_B) == "master" and sentinels.master() == REDIS_B:
            faults.times["promoted"] = time.time()
            at_promotion = broker_calls(REDIS_B)
        time.sleep(1)
    if at_promotion:
        # What the promoted replica served while the old master was unreachable: the app's
        # publishes (LPUSH) and the workers' takes (BRPOP) went to it, not only to the sentinels.
        now = broker_calls(REDIS_B)
        faults.facts["new_master_calls_while_cut_off"] = {k: now.get(k, 0) - at_promotion.get(k, 0) for k in now}
    faults.times["link back"] = time.time()
    net.set_link(REDIS, up=True)
    started = time.monotonic()
    while time.monotonic() - started < FOLLOW_SECONDS:
        if sentinels.role(REDIS) == "slave" and sentinels.replica_streaming(REDIS):
            faults.facts["old_master_follows_after_s"] = round(time.monotonic() - started, 1)
            return
        time.sleep(1)


def broker_calls(on: Host) -> dict[str, int]:
    """How many LPUSH (publishes) and BRPOP (a worker's takes) the server has run since it started."""
    calls = {}
    for line in sentinels.redis_cli(on, "info", "commandstats") or []:
        name, _, stats = line.partition(":")
        if name in ("cmdstat_lpush", "cmdstat_brpop"):
            calls[name.removeprefix("cmdstat_")] = int(stats.split(",")[0].removeprefix("calls="))
    return calls


def completion_gap(completed_at: list[float], when: Window) -> float | None:
    """The longest gap, in seconds, between two of these completions (or from the window's start) within `when`."""
    inside = sorted(at for at in completed_at if when.holds(at))
    gaps = [b - a for a, b in itertools.pairwise([when.start, *inside])]
    return round(max(gaps), 1) if gaps else None


def scenario(runner: Runner, outcome: Outcome, options: Options, *, reconcile: bool) -> None:
    faults = Faults()
    actions = [
        (5, "sockets looked at", runner.socket_check(outcome)),
        (options.cut_at, "Redis's master: host cut off", lambda: cut_master(faults)),
        (
            options.cut_at + 1,
            "Redis: promotion watched, then the old master's link up",
            lambda: watch_promotion(faults, options.cut_seconds),
        ),
    ]
    result = runner.load("f", options.cut_at + options.cut_seconds + options.after, actions)
    checks = runner.check("f", settle=90, reconcile=reconcile)
    times = checks["transfers"]
    outcome.figures["load"] = figures.overall(result, times)
    cut, promoted, back = (faults.times.get(k) for k in ("master cut off", "promoted", "link back"))
    outcome.figures["redis"] = faults.facts | {
        "promoted_after_cut_s": round(promoted - cut, 1) if promoted and cut else None,
        "master_at_end": (sentinels.master() or REDIS).name,
    }
    outcome.require(promoted is not None, "the sentinels did not promote Redis's replica while its master was cut off")
    served = faults.facts.get("new_master_calls_while_cut_off") or {}
    outcome.require(
        served.get("lpush", 0) > 0 and served.get("brpop", 0) > 0,
        f"the promoted replica took no publish or no worker's take while the old master was cut off: {served}",
    )
    outcome.require(
        faults.facts.get("old_master_follows_after_s") is not None,
        f"the old master did not replicate from the new one within {FOLLOW_SECONDS} s of its link's return",
    )
    if cut and promoted and back:
        completed_at = figures.completed_between_shards_at(result.requests, times)
        outcome.figures["redis"]["completion_gap_s"] = completion_gap(completed_at, Window("cut", cut, back))
        # Proven by the service: steps between shards (each a task message) carried by the new
        # master while the old one is unreachable.
        while_cut_off = Window("promoted, old master cut off", promoted, back)
        during = sum(1 for at in completed_at if while_cut_off.holds(at))
        outcome.figures["redis"]["completed_between_shards_while_cut_off"] = during
        outcome.require(during > 0, "no transfer between shards completed on the promoted replica's messages")
    runner.verdict(outcome, checks, result)
