"""The three scenarios: each runs the client's load with its fault, checks the outcome and keeps the figures.

(a) a workload of random transfers: it completes, money is conserved, the audit store reconciles;
(b) one shard's link down for a while during the load: no 500, only retryable 503s; the other
    shards' transfers keep completing; after the link is back, everything ends and is conserved;
(c) a slow link to one shard (the relay delays each direction): its payers' latency rises, the
    others' does not;
(d) the replicated shard's primary fails, by a postmaster SIGKILL and then by its host cut off:
    Patroni restarts it, then promotes the synchronous standby; nothing acknowledged is lost
    (hosts/failover.py);
(e) the control database's primary host cut off: a standby is promoted, the service finds it
    (hosts/control_failover.py).

Every scenario also holds each host's sockets to the deployment's edges while the load runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hosts import app, broker, control_failover, failover, figures, net, redis_failover, servers, sockets
from hosts.client import REQUEST_TIMEOUT
from hosts.figures import Window
from hosts.layout import (
    APP,
    CLIENT,
    CLUSTER_SHARD,
    PARTITIONED_SHARD,
    POSTGRES_PORT,
    RESULTS,
    SLOW_SHARD,
    host,
    relative,
)
from hosts.records import LoadResult
from hosts.stack import Stack

WALLETS_PER_SHARD = 30
DEPOSIT = 100_000_000  # per wallet: transfers of 1..1000 never run one dry
SETTLE_SECONDS = 90  # the bound for every transfer to end once the fault is over
DRAIN_SECONDS = 120  # the bound for the broker's queue to empty after a scenario's checks
WARMUP_SECONDS = 2  # left out of the windows that are compared
# (a) must do real work: floors far under a slow hour's figures (docs/HOSTS.md: ~7,900 in 30 s).
MIN_COMPLETED_A = 1000
MIN_CROSS_A = 200
# (b) attempts sent this close to the link's return may be answered once it is back.
PARTITION_MARGIN_S = 5


@dataclass
class Options:
    users: int = 15  # five per shard
    seconds_a: float = 30
    partition_at: float = 10
    partition_seconds: float = 20
    after_partition: float = 15
    slow_at: float = 15
    slow_seconds: float = 20
    relay_delay_ms: float = 20
    min_others_ratio: float = 0.3  # (b): the others' completions during the partition, against before
    min_slow_rise: float = 1.5  # (c): the slow shard's payers' p50, slow against fast
    max_others_rise: float = 2.0  # (c): the others' p50, slow against fast (the machine's speed swings)
    failover: failover.Options = field(default_factory=failover.Options)  # (d)
    control_failover: control_failover.Options = field(default_factory=control_failover.Options)  # (e)
    redis_failover: redis_failover.Options = field(default_factory=redis_failover.Options)  # (f)


@dataclass
class Outcome:
    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def require(self, condition: bool, message: str) -> None:
        if not condition:
            self.failures.append(message)


Action = tuple[float, str, Callable[[], None]]  # seconds into the load, what, how


class Runner:
    def __init__(self, stack: Stack, options: Options) -> None:
        self.stack = stack
        self.options = options
        self.results = [RESULTS / "setup.json"]  # every load so far: the checks cover them all
        self.events: dict[str, float] = {}
        self.queue = broker.QueueWatch()

    def client(self, *args: str, timeout: float) -> None:
        argv = [sys.executable, "-m", "hosts.client", *args, "--plan", str(self.stack.plan_file)]
        result = subprocess.run(net.on(CLIENT, argv), timeout=timeout, check=False)  # noqa: S603
        if result.returncode != 0:
            raise RuntimeError(f"the client failed: hosts.client {' '.join(args)} (exit {result.returncode})")

    def setup(self) -> None:
        self.stack.write_plan(per_shard=WALLETS_PER_SHARD, deposit=DEPOSIT)
        self.client("setup", "--out", str(self.results[0]), timeout=300)

    def load(self, label: str, seconds: float, actions: list[Action], resolve: float = 120) -> LoadResult:
        """The client's load for `seconds`, with the scenario's actions at their times; sockets looked at once."""
        out = RESULTS / f"{label}.json"
        argv = [
            sys.executable, "-m", "hosts.client", "load", "--plan", str(self.stack.plan_file),
            "--wallets", str(self.results[0]), "--label", label, "--seconds", str(seconds),
            "--users", str(self.options.users), "--resolve", str(resolve), "--out", str(out),
            "--seed", str(len(self.results)),
        ]  # fmt: skip
        self.queue = broker.QueueWatch()  # until the scenario's verdict
        self.queue.start()
        process = subprocess.Popen(net.on(CLIENT, argv))  # noqa: S603
        started = time.monotonic()
        try:
            for at, what, do in sorted(actions, key=lambda a: a[0]):
                time.sleep(max(0.0, started + at - time.monotonic()))
                do()
                self.events[f"{label}: {what}"] = time.time()
                print(f"  [{time.monotonic() - started:5.1f}s] {what}", flush=True)
            process.wait(timeout=seconds + resolve + 120)
        finally:
            if process.poll() is None:
                process.kill()
        if process.returncode != 0:
            raise RuntimeError(f"the client's load {label} failed (exit {process.returncode})")
        self.results.append(out)
        return LoadResult.read(out)

    def check(self, label: str, *, settle: float, reconcile: bool) -> dict[str, Any]:
        """The checks on the app host over every load so far."""
        assert self.stack.config is not None  # noqa: S101
        out = RESULTS / f"{label}-checks.json"
        args = [*map(str, self.results), "--client-id", str(self.stack.client_id), "--settle", str(settle)]
        result = app.python_on_app(
            self.stack.config, "hosts.verify", *args, *(["--reconcile"] if reconcile else []), "--out", str(out),
            timeout=settle + 400,
        )  # fmt: skip
        if result.returncode != 0 or not out.exists():
            raise RuntimeError(f"the checks failed to run (exit {result.returncode})")
        document: dict[str, Any] = json.loads(out.read_text())
        if document["in_flight_left"]:
            where = self.stack.dump_stacks(label)
            print(
                f"  {document['in_flight_left']} transfer(s) still in flight: stacks in {relative(where)}", flush=True
            )
            for stuck in document.get("in_flight", [])[:5]:
                print(f"    {stuck}", flush=True)
        return document

    def socket_check(self, outcome: Outcome) -> Callable[[], None]:
        def look() -> None:
            seen = sockets.snapshot()
            outcome.figures["connections"] = sockets.summary(seen)
            for problem in sockets.problems(seen) + sockets.missing(seen):
                outcome.failures.append(f"sockets: {problem}")

        return look

    def verdict(self, outcome: Outcome, checks: dict[str, Any], result: LoadResult) -> None:
        """What every scenario must end with: the bank test, check_ledger (and reconcile), no 500, no dead process."""
        for check, messages in checks["violations"].items():
            for message in messages[:10]:
                outcome.failures.append(f"{check}: {message}")
            if len(messages) > 10:
                outcome.failures.append(f"{check}: ... and {len(messages) - 10} more ({relative(RESULTS)})")
        commands = checks["commands"]
        bank = [check for check in checks["violations"] if check not in commands]
        outcome.figures["checks"] = {name: "OK" if c["ok"] else "FAILED" for name, c in commands.items()} | {
            "bank test": "FAILED" if bank else "OK",
            "settle_s": checks["settle_seconds"],
        }
        outcome.figures["money"] = checks.get("counts", {}).get("money")
        for bad in figures.bad_answers(result.requests)[:10]:
            outcome.failures.append(f"not a retryable answer: {bad}")
        hung = figures.timed_out(result.requests)
        outcome.require(not hung, f"{len(hung)} request(s) got no answer within {REQUEST_TIMEOUT:g} s: {hung[:5]}")
        dead = self.stack.dead_programs()
        outcome.require(not dead, f"processes died during the scenario: {', '.join(dead)}")
        # The next scenario starts on a quiet service: the saga's queue must empty on its own.
        drained, left = broker.wait_drained(DRAIN_SECONDS)
        self.queue.stop()
        outcome.figures["broker_queue"] = {"peak": self.queue.peak, "drained_after_checks_s": drained}
        outcome.require(
            drained is not None,
            f"the broker's queue still held {left} task messages {DRAIN_SECONDS} s after the checks",
        )

    # --- the scenarios ------------------------------------------------------------------------

    def scenario_a(self, *, reconcile: bool = True) -> Outcome:
        outcome = Outcome("a")
        result = self.load("a", self.options.seconds_a, [(5, "sockets looked at", self.socket_check(outcome))])
        checks = self.check("a", settle=SETTLE_SECONDS, reconcile=reconcile)
        outcome.figures["load"] = load = figures.overall(result, checks["transfers"])
        cross = figures.completed_between_shards(result.requests, checks["transfers"])
        outcome.figures["completed_between_shards"] = cross
        # What the synchronous standby costs: the replicated shard's payers against a single
        # server's (shard_01: no relay), in the same run.
        parts = figures.groups(
            result.requests,
            replicated=lambda r: r.payer_shard == CLUSTER_SHARD,
            single=lambda r: r.payer_shard == PARTITIONED_SHARD,
        )
        outcome.figures["payers_latency"] = {
            f"{name} ({CLUSTER_SHARD if name == 'replicated' else PARTITIONED_SHARD})": figures.latency_summary(
                figures.latencies(requests)
            )
            for name, requests in parts.items()
        }
        # A workload that did (almost) nothing proves nothing: floors far under a slow hour's figures.
        outcome.require(
            load["completed"] >= MIN_COMPLETED_A,
            f"only {load['completed']} transfers completed (at least {MIN_COMPLETED_A} expected)",
        )
        outcome.require(cross >= MIN_CROSS_A, f"only {cross} cross-shard transfers completed (at least {MIN_CROSS_A})")
        self.verdict(outcome, checks, result)
        return outcome

    def scenario_b(self, *, reconcile: bool = False) -> Outcome:
        o = self.options
        shard = host(PARTITIONED_SHARD)
        outcome = Outcome("b")
        went_down: list[float] = []

        def link_down() -> None:
            net.set_link(shard, up=False)
            went_down.append(time.monotonic())

        def link_up() -> None:
            # The whole partition, however late an earlier action let it begin.
            time.sleep(max(0.0, went_down[0] + o.partition_seconds - time.monotonic()))
            net.set_link(shard, up=True)

        actions: list[Action] = [
            (5, "sockets looked at", self.socket_check(outcome)),
            (o.partition_at, f"{shard.name}'s link down", link_down),
            (o.partition_at + 1, f"{shard.name} unreachable from the app host", self.link_check(outcome, shard)),
            (o.partition_at + o.partition_seconds, f"{shard.name}'s link up", link_up),
        ]
        seconds = o.partition_at + o.partition_seconds + o.after_partition
        result = self.load("b", seconds, actions)
        down, up = self.events[f"b: {shard.name}'s link down"], self.events[f"b: {shard.name}'s link up"]
        # The bound counts from the link's return; the client's retries have used part of it.
        settle = max(5.0, SETTLE_SECONDS - (time.time() - up))
        checks = self.check("b", settle=settle, reconcile=reconcile)
        times = checks["transfers"]
        outcome.figures["load"] = figures.overall(result, times)
        windows = [
            Window("before", result.started + WARMUP_SECONDS, down),
            Window("during", down, up),
            Window("after", up, result.ended),
        ]
        parts = figures.groups(
            result.requests,
            untouched=lambda r: not r.touches(shard.name),
            payer_on_it=lambda r: r.payer_shard == shard.name,
            payee_on_it=lambda r: r.payee_shard == shard.name and r.payer_shard != shard.name,
        )
        table: dict[str, Any] = {}
        for name, requests in parts.items():
            table[name] = {w.name: figures.throughput(requests, times, w) for w in windows}
            table[name]["during_statuses"] = figures.status_counts(requests, windows[1])
        outcome.figures["partition"] = table
        # How long a request touching the unreachable shard held its API thread before its 503.
        refused = [a.latency for r in parts["payer_on_it"] for a in r.attempts if a.status == 503]
        outcome.figures["503_latency"] = figures.latency_summary(refused) | {
            "max_ms": figures.ms(max(refused, default=0))
        }
        self.require_partition_felt(outcome, parts["payer_on_it"], times, down, up, result.ended)
        before = table["untouched"]["before"]["completed_per_s"]
        during = table["untouched"]["during"]["completed_per_s"]
        ratio = round(during / before, 2) if before else 0.0
        outcome.figures["untouched_ratio_during_vs_before"] = ratio
        outcome.require(
            ratio >= o.min_others_ratio,
            f"transfers not touching {shard.name} completed at {during}/s during the partition, {ratio:.0%} of"
            f" {before}/s before (at least {o.min_others_ratio:.0%} expected)",
        )
        touching = parts["payer_on_it"] + parts["payee_on_it"]
        mine = [row for r in touching if (a := figures.accepted(r)) and (row := times.get(a.transfer_id or ""))]
        ends = ("completed", "failed")
        outcome.figures["outcomes_touching_it"] = {end: sum(1 for row in mine if row[0] == end) for end in ends}
        if mine and all(row[0] in ends for row in mine):
            # When the last of them ended (its last update), counted from the link's return.
            outcome.figures["terminal_after_link_up_s"] = round(max(row[2] for row in mine) - up, 1)
        self.verdict(outcome, checks, result)
        return outcome

    def link_check(self, outcome: Outcome, shard: Any) -> Callable[[], None]:
        """Prove the partition: a TCP connect from the app host to the shard must time out."""

        def look() -> None:
            probe = (
                "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n"
                "except OSError:\n sys.exit(0)\nsys.exit(1)"
            )
            argv = [sys.executable, "-c", probe, shard.address, str(POSTGRES_PORT)]
            result = subprocess.run(net.on(APP, argv), capture_output=True, text=True, check=False)  # noqa: S603
            outcome.figures["partition_proven"] = result.returncode == 0
            outcome.require(result.returncode == 0, f"{shard.name} still answered a connect during its partition")

        return look

    def require_partition_felt(
        self, outcome: Outcome, payers_on_it: list[Any], times: Any, down: float, up: float, ended: float
    ) -> None:
        """Its payers complete nothing while the link is down, are told 503, and complete again after."""
        # A second's margin after the link goes down; attempts answered after it came back are not counted.
        cut = Window("cut off", down + 1, up)
        completed = figures.completions(payers_on_it, times, cut)
        statuses = figures.status_counts(payers_on_it, Window("asked", down + 1, up - PARTITION_MARGIN_S))
        accepted = sum(n for status, n in statuses.items() if status in ("201", "202"))
        outcome.figures["payers_on_it_while_cut_off"] = {"completed": completed, "statuses": statuses}
        outcome.require(
            completed == 0, f"{completed} transfer(s) paid from the partitioned shard completed while cut off"
        )
        outcome.require(accepted == 0, f"{accepted} request(s) paid from the partitioned shard accepted while cut off")
        outcome.require(
            statuses.get("503 service_unavailable", 0) > 0,
            f"its payers were not told 503 service_unavailable while cut off: {statuses}",
        )
        after = figures.completions(payers_on_it, times, Window("after", up, ended + SETTLE_SECONDS))
        outcome.require(after > 0, "no transfer paid from the partitioned shard completed after the link came back")

    def scenario_c(self, *, reconcile: bool = False) -> Outcome:
        o = self.options
        outcome = Outcome("c")
        delay = o.relay_delay_ms
        actions: list[Action] = [
            (5, "sockets looked at", self.socket_check(outcome)),
            (o.slow_at, f"relay to {SLOW_SHARD}: {delay:g} ms each way", lambda: servers.set_relay_delay(delay)),
        ]
        try:
            result = self.load("c", o.slow_at + o.slow_seconds, actions)
        finally:
            servers.set_relay_delay(0)
        slow_from = self.events[f"c: relay to {SLOW_SHARD}: {delay:g} ms each way"]
        checks = self.check("c", settle=SETTLE_SECONDS, reconcile=reconcile)
        outcome.figures["load"] = figures.overall(result, checks["transfers"])
        windows = [
            Window("fast", result.started + WARMUP_SECONDS, slow_from),
            Window("slow", slow_from + 1, result.ended),  # the relay reads its file within 0.2 s
        ]
        parts = figures.groups(
            result.requests,
            payer_on_slow=lambda r: r.payer_shard == SLOW_SHARD,
            others=lambda r: r.payer_shard != SLOW_SHARD,
        )
        table = {
            name: {w.name: figures.latency_summary(figures.latencies(requests, w)) for w in windows}
            for name, requests in parts.items()
        }
        outcome.figures["latency"] = table
        rises = {}
        for name in parts:
            fast, slow = table[name]["fast"]["p50_ms"], table[name]["slow"]["p50_ms"]
            rises[name] = round(slow / fast, 2) if fast and slow else None
        outcome.figures["p50_rise"] = rises
        slow_rise, others_rise = rises["payer_on_slow"], rises["others"]
        outcome.require(
            slow_rise is not None and slow_rise >= o.min_slow_rise,
            f"the p50 latency of transfers paid from {SLOW_SHARD} rose x{slow_rise} with the slow link"
            f" (at least x{o.min_slow_rise} expected)",
        )
        outcome.require(
            others_rise is not None and others_rise <= o.max_others_rise,
            f"the p50 latency of the other transfers rose x{others_rise} (at most x{o.max_others_rise} expected)",
        )
        self.verdict(outcome, checks, result)
        return outcome

    def scenario_d(self, *, reconcile: bool = True) -> Outcome:
        """Always reconciled: the audit stream's recovery after the failover is part of it."""
        outcome = Outcome("d")
        failover.scenario(self, outcome, self.options.failover)
        return outcome

    def scenario_e(self, *, reconcile: bool = False) -> Outcome:
        outcome = Outcome("e")
        control_failover.scenario(self, outcome, self.options.control_failover, reconcile=reconcile)
        return outcome

    def scenario_f(self, *, reconcile: bool = False) -> Outcome:
        outcome = Outcome("f")
        redis_failover.scenario(self, outcome, self.options.redis_failover, reconcile=reconcile)
        return outcome
