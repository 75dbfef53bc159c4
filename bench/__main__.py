"""`make bench`: end-to-end transfers through the real stack against the raw-SQL ceiling, in one run.

python -m bench [--shards 2] [--wallets 1000] [--seconds 20] [--concurrency 32]
                [--batch-size 200] [--batch-concurrency 4] [--hot-share 0.0] [--skip-open-loop]
                [--standbys none|async|sync]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

import psutil

from bench import stack, standbys


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--wallets", type=int, default=1000, help="wallets spread over all shards")
    parser.add_argument("--seconds", type=float, default=20, help="duration of each load phase")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients, single requests")
    parser.add_argument("--batch-size", type=int, default=200, help="transfers per batch request")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="closed-loop clients, batch requests")
    parser.add_argument("--hot-share", type=float, default=0.0, help="share of transfers paying one hot wallet")
    parser.add_argument("--hot-payer-share", type=float, default=0.0, help="share of transfers paid by one hot wallet")
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--api-threads", type=int, default=8)
    parser.add_argument("--saga-workers", type=int, default=2)
    parser.add_argument("--ceiling-seconds", type=int, default=8)
    parser.add_argument("--ceiling-clients", default="4,8,16", help="total pgbench clients to try")
    parser.add_argument(
        "--set-ceiling-clients", default="2,4,8", help="total pgbench clients to try for the set-based ceiling"
    )
    parser.add_argument("--skip-open-loop", action="store_true", help="skip the latency phase at half rate")
    parser.add_argument(
        "--phases",
        default="single,webhook,capture,batch,move",
        help="closed-loop phases to run: single,webhook,capture,batch,move (webhook: single with an endpoint"
        " registered for every event and a receiver in this process; capture: a hold then its capture, the capture's"
        " transfer counted; move: single requests while a quarter of the buckets moves to a shard added for it)",
    )
    parser.add_argument("--move-seconds", type=float, default=45, help="duration of the move phase")
    parser.add_argument("--no-cdc", action="store_true", help="do not run the audit CDC reader during the load")
    parser.add_argument(
        "--standbys",
        choices=standbys.MODES,
        default="none",
        help="a streaming standby per shard on this machine, commits waiting for it (sync) or not (async)",
    )
    parser.add_argument(
        "--credit-inline",
        action="store_true",
        help="the API runs a cross-shard transfer's credit in the request (SHARDWALLET_TRANSFER_CREDIT_INLINE=1)",
    )
    parser.add_argument(
        "--drains-in-workers",
        action="store_true",
        help="drains run in Celery workers, a message per drain, not in the API processes"
        " (SHARDWALLET_TRANSFER_DRAIN_IN_API=0)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="ENTRIES",
        help="first fill the shards set-based with a consistent history of about ENTRIES ledger entries"
        " (a tenth as many wallets; e.g. 10000000), and pay between a sample of its wallets too",
    )
    parser.add_argument("--history-sample", type=int, default=100_000, help="history wallets the phases pay between")
    parser.add_argument(
        "--reconcile-during-load",
        action="store_true",
        help="run `reconcile` against the audit store while the closed-loop phases run (needs the CDC)",
    )
    return parser.parse_args(argv)


def process_kind(proc: psutil.Process) -> str | None:
    try:
        name = proc.name()
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return None
    if name.startswith("postgres") or "postgres:" in cmdline:
        return "postgres"
    if "redis-server" in name:
        return "redis"
    if "run_cdc" in cmdline:
        return "cdc"
    if "gunicorn" in cmdline:
        return "api"
    if "celery" in cmdline:
        return "webhooks" if "webhooks" in cmdline else "saga"
    if proc.pid == os.getpid():
        return "loadgen"
    return None


def cpu_snapshot() -> dict[str, float]:
    totals: dict[str, float] = {}
    for proc in psutil.process_iter():
        kind = process_kind(proc)
        if kind is None:
            continue
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        totals[kind] = totals.get(kind, 0.0) + times.user + times.system
    return totals


def since_id(since: float) -> str:
    """The smallest UUIDv7 of a time: ids carry their creation millisecond first, so a phase's
    transfers are found through the primary key however many transfers came before."""
    import uuid

    return str(uuid.UUID(int=int(since * 1000) << 80))


def in_flight(since: float) -> int:
    rows = every_shard(
        "SELECT count(*) FROM transfers_transfer WHERE created_at >= to_timestamp(%s)"
        " AND status IN ('pending', 'debited', 'refunding')",
        [since],
    )
    return sum(count for (count,) in rows)


def every_shard(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """The rows of `sql` on every shard of the map, one after another."""
    from django.db import connections

    from apps.sharding.routing import shard_aliases

    rows: list[tuple[Any, ...]] = []
    for alias in shard_aliases():
        with connections[alias].cursor() as cursor:
            cursor.execute(sql, params)
            rows += cursor.fetchall()
    return rows


def terminal_states(since: float) -> dict[str, tuple[str, str | None, float, int]]:
    rows = every_shard(
        "SELECT id::text, status, failure_reason, extract(epoch FROM updated_at), attempts"
        " FROM transfers_transfer WHERE id >= %s::uuid AND created_at >= to_timestamp(%s)",
        [since_id(since), since],
    )
    return {tid: (status, reason, float(finished), attempts) for tid, status, reason, finished, attempts in rows}


def step_times(since: float) -> dict[str, tuple[float, float | None]]:
    """Per transfer created since `since`: when its first step ran (its created_at) and, for a
    cross-shard one, when the payee's shard credited it (the payee outcome's created_at)."""
    created = every_shard(
        "SELECT id::text, extract(epoch FROM created_at) FROM transfers_transfer"
        " WHERE id >= %s::uuid AND created_at >= to_timestamp(%s)",
        [since_id(since), since],
    )
    credited = dict(
        every_shard(
            "SELECT transfer_id::text, extract(epoch FROM created_at) FROM transfers_payee_credit"
            " WHERE transfer_id >= %s::uuid AND created_at >= to_timestamp(%s)",
            [since_id(since), since],
        )
    )
    return {tid: (float(at), float(credited[tid]) if tid in credited else None) for tid, at in created}


def wait_until_terminal(since: float, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while (left := in_flight(since)) and time.monotonic() < deadline:
        print(f"  waiting for {left} transfer(s) in flight", flush=True)
        time.sleep(1)
    if left:
        raise SystemExit(f"{left} transfer(s) still in flight after {timeout}s")


def cdc_catch_up(timeout: float = 120) -> dict[str, Any]:
    """The CDC reader's lag right after the load, and how long it took to reach zero."""
    from apps.audit.status import read_status

    def lags() -> dict[str, tuple[int, float]]:
        status = read_status() or {"shards": {}}
        return {a: (s["lag_bytes"], s["lag_seconds"]) for a, s in status["shards"].items()}

    at_end, started = lags(), time.monotonic()
    caught_up = None
    while time.monotonic() - started < timeout:
        status = read_status()
        if status and all(s["connected"] and s["lag_bytes"] == 0 for s in status["shards"].values()):
            caught_up = round(time.monotonic() - started, 1)
            break
        time.sleep(0.5)
    status = read_status() or {"shards": {}}
    return {
        "lag_at_end": at_end,
        "caught_up_after_seconds": caught_up,
        "changes_written": sum(s.get("changes_written", 0) for s in status["shards"].values()),
    }


def setup_wallets(count: int, history_entries: int = 0, history_sample: int = 0) -> tuple[str, list[str], Any]:
    """The bench's API client and its funded wallets; with a history, first the history (its
    wallets the client's too) and a sample of its wallets among those the phases pay between."""
    from apps.accounts.services import api_client_create
    from apps.ledger.services import wallet_create, wallet_fund
    from bench import history

    # A limit far above what the bench sends: each request pays the limit's check, none is refused.
    client, key = api_client_create(name="bench", rate_limit_per_second=10**6, rate_limit_burst=10**6)
    loaded = None
    ids = []
    if history_entries:
        loaded = history.load_history(history_entries, owner=client.id)
        ids += history.sample_wallets(history_sample)
        loaded["sampled_wallets"] = len(ids)
    for i in range(count):
        wallet = wallet_create(owner_id=client.id, currency="USD")
        wallet_fund(wallet_id=wallet.id, amount_minor=10**12, reference=f"bench-seed-{i}")
        ids.append(str(wallet.id))
    return key, ids, loaded


async def run_phase(args: argparse.Namespace, key: str, wallets: list[str], name: str, **kw: Any) -> Any:
    from bench.load import Client, Workload, closed_loop, open_loop

    workload = Workload(wallets, hot_share=args.hot_share, hot_payer_share=args.hot_payer_share)
    connections = max(args.concurrency, args.batch_concurrency) + 8
    async with Client(f"http://127.0.0.1:{stack.API_PORT}", key, connections) as client:
        if "rate" in kw:
            return await open_loop(client, workload, name=name, seconds=args.seconds, rate=kw["rate"])
        return await closed_loop(client, workload, name=name, seconds=args.seconds, **kw)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stack.configure_environment(args.shards)
    if args.credit_inline:
        os.environ["SHARDWALLET_TRANSFER_CREDIT_INLINE"] = "1"  # the API processes started below inherit it
    os.environ["SHARDWALLET_TRANSFER_DRAIN_IN_API"] = "0" if args.drains_in_workers else "1"
    stack.reset_bench_dir()
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    from apps.sharding.devstack import Devstack
    from apps.transfers.checks import check_ledger
    from bench import ceiling, report

    started = time.time()
    devstack = Devstack(settings.SHARD_MAP, settings.DEVSTACK_DIR, settings.REDIS_URL)
    print(f"bench stack: {args.shards} shard(s), ports {stack.BASE_PORT}+, Redis {stack.REDIS_URL}", flush=True)
    for line in devstack.up():
        print(" ", line)
    replicas: list[Any] = []
    services = stack.Services(
        api_workers=args.api_workers, api_threads=args.api_threads, saga_workers=args.saga_workers, cdc=not args.no_cdc
    )
    try:
        replicas = standbys.start_standbys(
            [settings.SHARD_MAP.shards[a] for a in settings.SHARD_MAP.aliases], args.standbys, stack.BENCH_DIR
        )
        if replicas:
            print(f"  a streaming standby per shard ({args.standbys}), port + {standbys.PORT_OFFSET}", flush=True)
        call_command("migrate_shards", verbosity=0)
        print(f"creating and funding {args.wallets} wallets", flush=True)
        key, wallets, loaded = setup_wallets(args.wallets, args.history, args.history_sample)
        connections.close_all()
        services.start()
        if loaded is not None and not args.no_cdc:
            from bench import history

            loaded["cdc_snapshot_seconds"] = history.wait_for_snapshot(stack.AUDIT_HTTP_PORT)
            print(f"  the CDC took its snapshot of the history in {loaded['cdc_snapshot_seconds']} s", flush=True)

        servers = [settings.SHARD_MAP.shards[a] for a in settings.SHARD_MAP.aliases]
        clients = [int(c) for c in args.ceiling_clients.split(",")]
        set_clients = [int(c) for c in args.set_ceiling_clients.split(",")]
        set_size = args.batch_size if "batch" in args.phases else 0
        print(f"raw-SQL ceiling: pgbench on every shard, clients {clients}, {args.ceiling_seconds}s each", flush=True)
        if set_size:
            print(f"  then set-based, {set_size} transfers per transaction, clients {set_clients}", flush=True)
        ceil, set_ceil = ceiling.measure(
            servers,
            wallets_per_shard=max(args.wallets // args.shards, 10),
            seconds=args.ceiling_seconds,
            client_counts=clients,
            workdir=stack.BENCH_DIR,
            set_size=set_size,
            set_client_counts=set_clients,
        )
        print(f"  ceiling {ceil.transfers_per_second:.0f} transfers/s ({ceil.by_clients})", flush=True)
        if set_ceil is not None:
            print(f"  set-based ceiling {set_ceil.transfers_per_second:.0f} transfers/s ({set_ceil.by_clients})")

        results = []
        phases = [p.strip() for p in args.phases.split(",") if p.strip()]
        plans: list[tuple[str, dict[str, Any]]] = []
        if "single" in phases:
            plans.append(("single", {"concurrency": args.concurrency}))
        if "webhook" in phases:
            plans.append(("webhook", {"concurrency": args.concurrency}))
        if "capture" in phases:
            plans.append(("capture", {"concurrency": args.concurrency, "capture": True}))
        if "batch" in phases:
            plans.append(("batch", {"concurrency": args.batch_concurrency, "batch_size": args.batch_size}))
        during = ReconcileDuringLoad(args.seconds / 4) if args.reconcile_during_load and not args.no_cdc else None
        for name, kw in plans:
            if during is not None:
                during.start_for(name)
            if name == "webhook":
                results.append(run_webhook_phase(args, key, wallets, kw, report))
            else:
                results.append(run_measured_phase(args, key, wallets, name, kw, report))
            if during is not None:
                during.join()
        move_summary = None
        if "move" in phases:
            move_summary = run_move_scenario(args, key, wallets, report)
            if move_summary is None:
                return 1
        single = next((r for r in results if r.name == "single"), None)
        if single is not None and not args.skip_open_loop:
            rate = max(single.completed_per_second / 2, 1)
            results.append(run_measured_phase(args, key, wallets, "single@half", {"rate": rate}, report))

        print("conservation check (check_ledger)", flush=True)
        ledger = check_ledger()
        if not ledger.ok:
            for violation in ledger.violations[:20]:
                print("  VIOLATION:", violation)
            return 1
        print(f"  ledger OK: {ledger.wallets} wallets, {ledger.transfers} transfers", flush=True)
        cdc = None if args.no_cdc else cdc_catch_up()
        from bench import history

        sizes = history.table_sizes()
        size_figures = history.at_size(
            f"http://127.0.0.1:{stack.API_PORT}", None if args.no_cdc else stack.AUDIT_HTTP_PORT
        )

        document = {
            "command": "python -m bench " + " ".join(argv),
            "machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
            "options": vars(args),
            "ceiling": {
                "transfers_per_second": ceil.transfers_per_second,
                "clients": ceil.clients,
                "by_clients": ceil.by_clients,
            },
            "set_ceiling": None
            if set_ceil is None
            else {
                "transfers_per_second": set_ceil.transfers_per_second,
                "transfers_per_transaction": set_size,
                "clients": set_ceil.clients,
                "by_clients": set_ceil.by_clients,
            },
            "ledger_ok": True,
            "history": loaded,
            "table_sizes": sizes,
            "at_size": size_figures,
            "move": move_summary,
            "cdc": cdc,
            "reconcile_during_load": during.outcomes if during is not None else None,
            "webhooks": WEBHOOK_FIGURES or None,
            "duration_seconds": time.time() - started,
        }
        json_path, png_path = report.write_outputs(stack.BENCH_DIR, document, results)
        print()
        ceilings = report.Ceilings(ceil.transfers_per_second, set_ceil.transfers_per_second if set_ceil else None)
        print(report.table(results, ceilings))
        print()
        print(report.cpu_table(results))
        print()
        print(report.cpu_per_transfer_table(results))
        print()
        print(report.slowest_table(results))
        print()
        for r in results:
            if r.failed_by_reason or r.rejected:
                print(f"{r.name}: failed {r.failed_by_reason} rejected {r.rejected}")
        for r in results:
            against, value = ceilings.for_phase(r.name)
            print(f"RATIO {r.name}: {r.completed_per_second / value:.2f} of the {against} ceiling")
        print(history.sizes_table(sizes))
        print(history.at_size_line(size_figures))
        if loaded is not None:
            print("HISTORY:", json.dumps(loaded))
        if move_summary is not None:
            print("MOVE:", json.dumps(move_summary, indent=1))
        if WEBHOOK_FIGURES:
            print("WEBHOOKS:", json.dumps(WEBHOOK_FIGURES))
        if cdc is not None:
            print(
                f"CDC: lag at the end of the load {cdc['lag_at_end']} (bytes, seconds per shard); "
                f"caught up {cdc['caught_up_after_seconds']} s later; {cdc['changes_written']} changes written"
            )
        print(f"\nwrote {json_path} and {png_path} ({time.time() - started:.0f}s)")
        return 0
    finally:
        services.stop()
        connections.close_all()
        standbys.stop_standbys(replicas)
        devstack.down(purge=True)


def run_move_scenario(args: argparse.Namespace, key: str, wallets: list[str], report: Any) -> dict[str, Any] | None:
    from apps.sharding import moves
    from bench import move

    target = f"shard_{args.shards:02d}"
    print(f"move: single requests for {args.move_seconds:.0f}s; buckets 0..255 move to {target}, added", flush=True)
    phase_args = argparse.Namespace(**{**vars(args), "seconds": args.move_seconds})
    load, run = move.run_move_phase(
        run_phase, phase_args, key, wallets, host="127.0.0.1", port=stack.BASE_PORT + 1 + args.shards, target=target
    )
    if run.returncode != 0:
        print(run.output)
        print("  the move failed", flush=True)
        return None
    wait_until_terminal(load.started)
    detail = moves.moves_recent(1)[0].detail
    summary = move.summarize(load, run, detail)
    print(
        f"  moved {summary['rows_copied']} rows in {summary['move_seconds']} s; writes paused"
        f" {summary['pause_ms_reported_by_mover']} ms; touched requests added p99"
        f" {summary['touched_added_latency_ms']['p99']} ms, max {summary['touched_added_latency_ms']['max']} ms;"
        f" failed {summary['failed_requests_during_move']}; untouched dip (worst second)"
        f" {summary['untouched_dip_worst_second']}",
        flush=True,
    )
    return summary


class ReconcileDuringLoad:
    """`reconcile` run once in each phase, `delay` seconds into its load, while requests keep coming."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.outcomes: list[dict[str, Any]] = []
        self._thread: threading.Thread | None = None

    def start_for(self, phase: str) -> None:
        self._thread = threading.Thread(target=self._run, args=(phase,), name="reconcile-during-load", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def _run(self, phase: str) -> None:
        from django.db import connections

        from apps.audit.reconcile import reconcile
        from apps.audit.store import connect_reader

        time.sleep(self.delay)
        started = time.monotonic()
        try:
            result = reconcile(connect_reader(), wait=30)
            outcome: dict[str, Any] = {
                "phase": phase, "ok": result.ok, "seconds": round(time.monotonic() - started, 1),
                "rounds": result.attempts, "wallets": result.wallets, "entries": result.entries,
                "differences": result.differences[:20],
            }  # fmt: skip
        except Exception as exc:  # reported, not raised: the load goes on
            outcome = {"phase": phase, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            connections.close_all()
        self.outcomes.append(outcome)
        print(f"  reconcile during the {phase} load: {outcome}", flush=True)


WEBHOOK_FIGURES: dict[str, Any] = {}


def run_webhook_phase(args: argparse.Namespace, key: str, wallets: list[str], kw: dict, report: Any) -> Any:
    """The single-request load with an endpoint registered for every event type: the outbox's
    delivery cost (compare with `single`), then how long its events took to arrive."""
    from bench import webhooks
    from bench.report import percentiles

    api = f"http://127.0.0.1:{stack.API_PORT}"
    receiver = webhooks.BenchReceiver()
    endpoint_id = webhooks.register(api, key, receiver.url)
    started = time.time()
    try:
        result = run_measured_phase(args, key, wallets, "webhook", kw, report)
        counts = every_shard("SELECT count(*) FROM events_event WHERE id >= %s", [since_id(started)])
        expected = sum(n for (n,) in counts)
        drained = webhooks.wait_delivered(receiver, expected, timeout=180)
    finally:
        webhooks.unregister(api, key, endpoint_id)
        receiver.close()
    with receiver.lock:
        lags = list(receiver.lags_ms.values())
        requests = receiver.requests
    WEBHOOK_FIGURES.update({
        "events": expected, "delivered": len(lags), "requests": requests,
        "all_delivered_after_load_seconds": None if drained is None else round(drained, 1),
        "lag_ms": percentiles(lags) if lags else None,
    })  # fmt: skip
    print(f"  webhook: {len(lags)}/{expected} events delivered, lag {WEBHOOK_FIGURES['lag_ms']}", flush=True)
    return result


def run_measured_phase(args: argparse.Namespace, key: str, wallets: list[str], name: str, kw: dict, report: Any) -> Any:
    before = cpu_snapshot()
    load = asyncio.run(run_phase(args, key, wallets, name, **kw))
    wait_until_terminal(load.started)
    after = cpu_snapshot()
    result = report.summarize(load, terminal_states(load.started), step_times(load.started))
    result.cpu_seconds = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    print(
        f"  {name}: {result.accepted} accepted, {result.completed_per_second:.0f} completed/s, "
        f"p99 to terminal {result.terminal_latency_ms['p99']:.0f} ms",
        flush=True,
    )
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
