"""`make chaos`: money moves through the real API while a seeded schedule of faults hits the stack.

python -m chaos [--seed N] [--duration 180] [--clients 6] [--shards 3] [--clusters]

It starts its own stack (ports 296xx, data under var/chaos/), supervised like production
(whatever dies is restarted), runs client threads and the fault schedule for --duration
seconds, lets the service settle on its own, then checks every answer against the shards
and runs check_ledger and reconcile. Exit status 0 on PASS, 1 on any violation. The same
seed replays the same fault schedule and the same requests.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from typing import Any, NoReturn

from chaos import report, stack
from chaos.clusters import Clusters, require_root
from chaos.stack import CHAOS


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, help="names the fault schedule and the requests (default: random)")
    parser.add_argument("--duration", type=float, default=180, help="seconds of load with faults")
    parser.add_argument("--clients", type=int, default=6, help="client threads")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--wallets-per-shard", type=int, default=6, help="paying wallets on each shard")
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--celery-workers", type=int, default=2, help="Celery worker programs")
    parser.add_argument("--celery-concurrency", type=int, default=2, help="pool processes per Celery worker")
    parser.add_argument("--resolve-timeout", type=float, default=150, help="seconds to get every open request answered")
    parser.add_argument("--settle-timeout", type=float, default=180, help="seconds for every transfer to end")
    parser.add_argument("--no-faults", action="store_true", help="the same load without faults (a control run)")
    parser.add_argument(
        "--clusters",
        action="store_true",
        help="each shard a Patroni cluster of three members (root); a primary kill among the faults",
    )
    return parser.parse_args(argv)


def _interrupted(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    print(f"chaos: seed {seed} (make chaos SEED={seed} replays this schedule)", flush=True)
    if args.clusters:
        require_root()
    lock = stack.hold_run_lock()  # noqa: F841 - kept open for the whole run
    clusters = Clusters.layout(stack.CLUSTERS_DIR, stack.LOGS, args.shards) if args.clusters else None
    stack.configure(args.shards, clusters)
    import django

    django.setup()
    from chaos.run import ChaosRun

    run = ChaosRun(args, seed, clusters)
    # SIGTERM as Ctrl-C: tear the stack down on the way out. SIGINT explicitly too: a shell
    # that starts us in the background (no job control) leaves it ignored otherwise.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    started = time.monotonic()
    try:
        document, verdict, history = run.execute()
    except KeyboardInterrupt:
        print(f"\nchaos: interrupted; seed {seed}; stopping the stack", flush=True)
        return 130
    finally:
        # A second Ctrl-C (or a SIGTERM) must not cut the teardown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        run.teardown()
    document["elapsed_seconds"] = round(time.monotonic() - started, 1)
    json_path, history_path = report.write(CHAOS.dir, document, history)
    print(report.summary(document, verdict))
    print(f"report {json_path}, every request in {history_path}; logs in {CHAOS.dir / 'logs'}")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
