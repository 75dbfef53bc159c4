"""Scenario (e): the control database's primary is cut off under load.

The control database holds the API keys, the shard map and the operators' requests: every
request reads it (the key), the workers and beat read the map from it, the CDC its requests.
Its primary's host loses its link; Patroni's leader key expires and the synchronous standby is
promoted; every process finds it through the map's `members` for the control entry, without a
restart. When the link is back, the old primary rejoins as a standby (pg_rewind).

Then, as in every scenario: no answer but a retryable 503; every acknowledged transfer on the
shards; money conserved; check_ledger passes; the broker's queue drains. Reported: the pause
of acknowledged transfers while the control database had no primary, the promotion's and the
rejoin's durations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hosts import figures
from hosts.failover import REJOIN_SECONDS, Faults, cut_primary, watch_promotion, write_pause
from hosts.figures import Window

if TYPE_CHECKING:
    from hosts.scenarios import Outcome, Runner


@dataclass
class Options:
    cut_at: float = 15
    cut_seconds: float = 50  # past Patroni's TTL (20 s) and the promotion, with requests answered again before
    after: float = 30  # for the old primary's rejoin (within REJOIN_SECONDS) and the service to settle


def scenario(runner: Runner, outcome: Outcome, options: Options, *, reconcile: bool) -> None:
    faults = Faults()
    cluster = runner.stack.control_cluster
    actions = [
        (5, "sockets looked at", runner.socket_check(outcome)),
        (options.cut_at, "the control database's primary: host cut off", lambda: cut_primary(cluster, faults)),
        (
            options.cut_at + 1,
            "control: promotion watched, then the old primary's link up",
            lambda: watch_promotion(cluster, faults, options.cut_seconds),
        ),
    ]
    result = runner.load("e", options.cut_at + options.cut_seconds + options.after, actions)
    checks = runner.check("e", settle=90, reconcile=reconcile)
    times = checks["transfers"]
    outcome.figures["load"] = figures.overall(result, times)
    cut, promoted, back = (faults.times.get(k) for k in ("primary cut off", "promoted", "link back"))
    outcome.figures["control"] = faults.facts | {
        "promoted_after_cut_s": round(promoted - cut, 1) if promoted and cut else None,
        "write_pause_s": write_pause(result.requests, cut, back) if cut and back else None,
    }
    outcome.require(
        faults.cut is not None and promoted is not None,
        "no standby of the control database was promoted while its primary was cut off",
    )
    outcome.require(
        faults.facts.get("old_primary_rejoined_as_standby_s") is not None,
        f"the control database's old primary {faults.cut and faults.cut.name} did not rejoin as a standby within"
        f" {REJOIN_SECONDS} s",
    )
    if promoted and back:
        # Proven by the service: transfers answered and completed on the new primary while the old one is unreachable.
        during = figures.completions(result.requests, times, Window("promoted, old primary cut off", promoted, back))
        outcome.figures["completed_while_the_old_primary_was_cut_off"] = during
        outcome.require(during > 0, "no transfer completed while the control database's old primary was cut off")
    outcome.figures["control"]["leader_at_end"] = cluster.settled(timeout=120).name
    runner.verdict(outcome, checks, result)
