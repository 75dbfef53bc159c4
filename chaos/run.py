"""One fault run, start to verdict: stack up, load and faults, settle, check, tear down."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.db import connections

from apps.audit.status import read_status
from apps.sharding.devstack import Devstack, port_is_open
from bench.stack import wait_for_api
from chaos import settle, stack
from chaos.api import ApiClient
from chaos.checks import Verdict, verify
from chaos.client import Client, Deadlines
from chaos.clusters import Clusters
from chaos.faults import Nemesis
from chaos.history import History, Op
from chaos.schedule import PlannedFault, plan_faults
from chaos.snapshot import ownership_problems, take_snapshot
from chaos.stack import CHAOS
from chaos.supervisor import Shard, Supervisor
from chaos.timeline import Timeline
from chaos.workload import LEAN_DEPOSIT, SEED_DEPOSIT, Wallets, Workload
from hosts.patroni import install_patroni

PROGRESS_EVERY = 15.0  # seconds between progress lines during the load


class ChaosRun:
    def __init__(self, args: argparse.Namespace, seed: int, clusters: Clusters | None = None) -> None:
        self.args = args
        self.seed = seed
        self.clusters = clusters  # `--clusters`: the shards' Patroni members
        self.timeline = Timeline()
        self.history = History()
        self.deadlines = Deadlines()
        self.devstack = Devstack(settings.SHARD_MAP, settings.DEVSTACK_DIR, settings.REDIS_URL)
        self.supervisor: Supervisor | None = None
        self.nemesis: Nemesis | None = None
        self.clients: list[Client] = []
        self.passed = False  # the servers' data is kept for a post-mortem unless the run passed

    def execute(self) -> tuple[dict[str, Any], Verdict, History]:
        client_id, key, wallets = self._bring_up()
        plan = [] if self.args.no_faults else self._plan()
        self._load(key, wallets, plan)
        settle_started = time.monotonic()
        verdict, facts = self._settle_and_check(client_id, wallets)
        self.passed = verdict.ok
        assert self.supervisor is not None  # noqa: S101 - set by the steps above
        assert self.nemesis is not None  # noqa: S101
        document = {
            "seed": self.seed,
            "options": vars(self.args),
            "plan": [f.as_dict() for f in plan],
            "faults": dict(self.nemesis.injected),
            "faults_skipped": dict(self.nemesis.skipped),
            "restarts": dict(self.supervisor.restarts),
            "requests": dict(self.history.requests),
            "settle_seconds": round(time.monotonic() - settle_started, 1),
            **facts,
            "counts": verdict.counts,
            "violations": verdict.violations,
            "verdict": "PASS" if verdict.ok else "FAIL",
            "timeline": self.timeline.events,
        }
        return document, verdict, self.history

    def _bring_up(self) -> tuple[int, str, Wallets]:
        killed = stack.kill_leftovers()
        if killed:
            print(f"killed {killed} process(es) left by an earlier run", flush=True)
        if self.clusters is not None:
            self.clusters.stop_leftovers()
            self.clusters.remove()
        self.devstack.down()  # servers of an earlier run that did not stop
        CHAOS.reset()
        busy = [p for p in stack.ports(self.clusters) if port_is_open("127.0.0.1", p)]
        if busy:
            raise SystemExit(f"port(s) {busy} are taken; the chaos stack needs them")
        stack.fresh_logs()
        kind = "Patroni clusters of three" if self.clusters is not None else "shards"
        print(f"chaos stack: {self.args.shards} {kind}, ports {CHAOS.base_port}+, under {CHAOS.dir}", flush=True)
        rng = random.Random(f"supervisor:{self.seed}")  # noqa: S311 - restart delays, not secrets
        self.supervisor = Supervisor({}, {}, self.timeline, rng)
        self.supervisor.start()
        if self.clusters is not None:
            self._bring_up_clusters(self.clusters)
        for line in self.devstack.up():
            print(" ", line, flush=True)
        call_command("migrate_shards", verbosity=0)
        client_id, key, wallets = stack.create_wallets(seed=self.seed, per_shard=self.args.wallets_per_shard)
        connections.close_all()  # the shards will crash under these connections
        programs = stack.programs(
            api_workers=self.args.api_workers,
            celery_workers=self.args.celery_workers,
            celery_concurrency=self.args.celery_concurrency,
        )
        # Single servers are watched through their postmaster; a cluster's members by their Patroni.
        self.supervisor.shards = {
            c.server.alias: Shard(c) for c in self.devstack.clusters() if c.server.alias.startswith("shard_")
        }
        self.supervisor.launch(programs)
        wait_for_api(CHAOS.api_url, 90, stack.LOGS / "api.log")
        if self.clusters is not None:
            self._keep_cdc_slot(self.clusters)
        self._fund(key, wallets)
        return client_id, key, wallets

    def _bring_up_clusters(self, clusters: Clusters) -> None:
        """etcd and every member's Patroni, supervised; each shard's database once its cluster leads."""
        assert self.supervisor is not None  # noqa: S101 - started just before
        install_patroni()
        started = time.monotonic()
        self.supervisor.launch(clusters.programs(dict(os.environ)))
        try:
            leaders = clusters.wait_settled(240)
        except TimeoutError as exc:
            raise SystemExit(f"the shards' clusters did not settle: {exc}; see {stack.LOGS}/patroni-*.log") from exc
        clusters.create_databases(settings.SHARD_MAP.shards[clusters.shards[0].alias].name)
        said = ", ".join(f"{alias} led by {name}" for alias, name in leaders.items())
        print(f"  clusters: {said}, each with a synchronous standby ({time.monotonic() - started:.0f} s)", flush=True)

    def _keep_cdc_slot(self, clusters: Clusters) -> None:
        """Once the CDC streams from every shard, its slot made permanent in each cluster (as an
        operator does after the CDC's first start, docs/DEPLOY.md): the stream survives a failover."""
        deadline = time.monotonic() + 120
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = read_status() or {}
            shards = status.get("shards", {})
            if (
                status.get("slot")
                and len(shards) == len(clusters.shards)
                and all(s.get("connected") for s in shards.values())
            ):
                break
            time.sleep(1)
        else:
            raise SystemExit(f"the CDC did not stream from every shard: {status}; see {stack.LOGS / 'cdc.log'}")
        try:
            seconds = clusters.keep_slot(status["slot"], settings.SHARD_MAP.shards[clusters.shards[0].alias].name, 120)
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"{exc}; see {stack.LOGS}/patroni-*.log") from exc
        print(f"  clusters: every standby holds the CDC's slot {status['slot']} ({seconds:.0f} s)", flush=True)

    def _fund(self, key: str, wallets: Wallets) -> None:
        """Seed money through the API, so that it is in the clients' records like every later deposit."""
        funder = self._client(0, key, Workload(wallets, 0, random.Random(0)), Deadlines())  # noqa: S311
        funder.deadlines.give_up_at = time.monotonic() + 60
        for i, wallet in enumerate(wallets.payers):
            amount = LEAN_DEPOSIT if wallet in wallets.lean else SEED_DEPOSIT
            funder.execute(Op(f"chaos-fund-{i}", "deposit", "deposit", "normal", wallet, amount, "USD"))
        funder.api.close()

    def _client(self, index: int, key: str, workload: Workload, deadlines: Deadlines) -> Client:
        api = ApiClient("127.0.0.1", CHAOS.api_port, key)
        return Client(
            index=index, api=api, workload=workload, history=self.history, timeline=self.timeline, deadlines=deadlines
        )

    def _plan(self) -> list[PlannedFault]:
        assert self.supervisor is not None  # noqa: S101
        workers = sorted(n for n in self.supervisor.programs if n.startswith("worker-"))
        shards = sorted(settings.SHARD_MAP.aliases)
        plan = plan_faults(
            self.seed, self.args.duration, shards=shards, celery_workers=workers, clusters=self.clusters is not None
        )
        # A digest to compare two runs' schedules at a glance (same seed and duration, same digest).
        digest = hashlib.sha256(json.dumps([f.as_dict() for f in plan]).encode()).hexdigest()[:12]
        print(f"fault schedule {digest}: {len(plan)} faults over {self.args.duration:g} s", flush=True)
        return plan

    def _load(self, key: str, wallets: Wallets, plan: list[PlannedFault]) -> None:
        assert self.supervisor is not None  # noqa: S101
        self.timeline.mark_zero()
        self.timeline.record("load", f"{self.args.clients} clients start")
        for i in range(1, self.args.clients + 1):
            workload = Workload(wallets, i, random.Random(f"client:{self.seed}:{i}"))  # noqa: S311
            self.clients.append(self._client(i, key, workload, self.deadlines))
        self.nemesis = Nemesis(
            plan=plan, supervisor=self.supervisor, redis_url=CHAOS.redis_url, timeline=self.timeline,
            clusters=self.clusters,
        )  # fmt: skip
        for client in self.clients:
            client.start()
        self.nemesis.start()
        next_progress = PROGRESS_EVERY
        while self.timeline.now() < self.args.duration:
            time.sleep(0.5)
            if self.timeline.now() >= next_progress:
                next_progress += PROGRESS_EVERY
                self.timeline.say(
                    f"progress: {self.history.request_total} requests, {len(self.history.ops)} keys,"
                    f" {sum(self.nemesis.injected.values())} faults"
                )
        self.nemesis.stop()
        self.timeline.record("load", "faults stop; no new requests; open ones are retried until answered")
        self.deadlines.end_load(self.args.resolve_timeout)
        for client in self.clients:
            client.join(timeout=self.args.resolve_timeout + 60)
        open_ops = len(self.history.unresolved())
        self.timeline.record("load", f"clients done; {open_ops} request(s) never answered")

    def _settle_and_check(self, client_id: int, wallets: Wallets) -> tuple[Verdict, dict[str, Any]]:
        assert self.supervisor is not None  # noqa: S101
        deadline = time.monotonic() + 60
        while not self.supervisor.all_up() and time.monotonic() < deadline:
            time.sleep(0.5)
        connections.close_all()
        unfinished_move = self.nemesis.mover.finish() if self.nemesis is not None else None
        left = settle.wait_until_terminal(self.timeline, self.args.settle_timeout)
        self.timeline.record("settle", f"{len(left)} transfer(s) still in flight" if left else "every transfer ended")
        cdc = settle.wait_for_cdc(120)
        self.timeline.record("settle", f"audit stream caught up after {cdc} s" if cdc is not None else "CDC lagging")
        snap = take_snapshot(client_id)
        verdict = verify(self.history, snap, wallets)
        if unfinished_move:
            verdict.fail("move", unfinished_move)
        self._check_faults_and_moves(verdict)
        for problem in ownership_problems():
            verdict.fail("ownership", problem)
        if self.clusters is not None:
            self._check_clusters(self.clusters, verdict)
        for client in self.clients:
            if client.crashed or client.is_alive():
                verdict.fail("harness", f"{client.name}: {client.crashed or 'still running after the deadline'}")
        commands = {}
        for name, argv in (("check_ledger", ["check_ledger"]), ("reconcile", ["reconcile", "--wait", "30"])):
            result = settle.run_manage(*argv)
            commands[name] = {"ok": result.ok, "output": result.output[-4000:]}
            self.timeline.record("check", f"{result.command}: {'OK' if result.ok else 'FAILED'}")
            if not result.ok:
                verdict.fail(name, "\n".join(result.output.splitlines()[-12:]))
        facts = {
            "cdc_caught_up_after_seconds": cdc,
            "commands": commands,
            "saga_metrics": settle.saga_metrics(CHAOS.api_url),
            "wallets": {"payers": len(wallets.payers), "other": len(wallets.shard_of) - len(wallets.payers)},
            "moves": dict(self.nemesis.mover.outcomes) if self.nemesis is not None else {},
            "promotions": self.nemesis.promotions if self.nemesis is not None else [],
        }
        return verdict, facts

    def _check_clusters(self, clusters: Clusters, verdict: Verdict) -> None:
        """Every primary kill ended in a promotion, and every cluster is whole again: a leader, a
        synchronous standby, every member streaming (the killed primary rewound and following)."""
        assert self.nemesis is not None  # noqa: S101
        self.nemesis.wait_for_promotions()
        for promotion in self.nemesis.promotions:
            if promotion["to"] is None:
                verdict.fail("failover", f"{promotion['shard']}: no member took over from {promotion['from']}")
        try:
            leaders = clusters.wait_settled(120)
        except TimeoutError as exc:
            verdict.fail("failover", f"a cluster is not whole again: {exc}")
            return
        self.timeline.record("check", "clusters whole: " + ", ".join(f"{a} led by {n}" for a, n in leaders.items()))

    def _check_faults_and_moves(self, verdict: Verdict) -> None:
        """A run proves only what it did: every planned fault fired, and the moves went as operators expect."""
        if self.nemesis is None:
            return
        for kind, count in self.nemesis.skipped.items():
            verdict.fail("faults", f"{count} planned {kind} fault(s) never hit a live target")
        for message in self.nemesis.mover.violations:
            verdict.fail("move", message)
        planned_moves = sum(1 for f in self.nemesis.plan if f.kind == "move_buckets")
        if planned_moves and not self.nemesis.mover.outcomes["done"]:
            verdict.fail("move", f"{planned_moves} move fault(s) planned but no move reached done")

    def teardown(self) -> None:
        """Stop faults, clients and every process, then the servers (their data deleted if the run passed)."""
        self.deadlines.end_load(0)
        if self.nemesis is not None:
            self.nemesis.stop()
        if self.supervisor is not None:
            self.supervisor.stop()
        connections.close_all()
        for line in self.devstack.down(purge=self.passed):
            print(" ", line, flush=True)
        if self.clusters is not None:
            self.clusters.stop_leftovers()  # a server whose Patroni did not stop it in time
            if self.passed:
                self.clusters.remove()
