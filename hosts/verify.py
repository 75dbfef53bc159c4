"""The checks, run on the app host after a scenario: settle, then hold the shards to what the client saw.

    python -m hosts.verify --client-id N --settle 90 [--reconcile] --out OUT RESULT...

It waits (up to --settle seconds) until no transfer is in flight, reads every shard, and
runs `chaos.checks.verify` over every request the client made so far (the set-up's
deposits and each scenario's transfers): one key one transfer, every transfer terminal,
entries matching statuses, every balance what the answers make it, money conserved. Then
`manage.py check_ledger` and, with --reconcile, `manage.py reconcile` (the audit store
against the shards) once the CDC has caught up. Writes the verdict and each transfer's
status and times (created, last updated) as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import django


def transfer_times() -> dict[str, tuple[str, float, float]]:
    """Each transfer's status, creation and last update (its terminal time once terminal), wall clock."""
    from django.db import connections

    from apps.sharding.routing import shard_aliases

    times: dict[str, tuple[str, float, float]] = {}
    for alias in shard_aliases():
        with connections[alias].cursor() as cursor:
            cursor.execute(
                "SELECT id::text, status, extract(epoch FROM created_at)::float8,"
                " extract(epoch FROM updated_at)::float8 FROM transfers_transfer WHERE sharding_serves(id)"
            )
            for tid, status, created, updated in cursor.fetchall():
                times[tid] = (status, created, updated)
    return times


def _stuck(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "status": row.status, "attempts": row.attempts, "parked": row.parked,
        "last_error": row.last_error[-500:],
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    from django.db import DatabaseError

    from chaos import settle
    from chaos.checks import verify
    from chaos.history import History
    from chaos.snapshot import take_snapshot
    from chaos.timeline import Timeline
    from chaos.workload import Wallets
    from hosts.records import LoadResult

    results = [LoadResult.read(path) for path in args.results]
    started = time.monotonic()
    left = settle.wait_until_terminal(Timeline(), args.settle)
    settled = round(time.monotonic() - started, 1)
    history = History()
    shard_of: dict[str, str] = {}
    for result in results:
        for request in result.requests:
            history.add_op(request.to_op())
            if request.kind == "deposit":
                shard_of[request.payer] = request.payer_shard
    try:
        snap = take_snapshot(args.client_id)
    except DatabaseError as exc:  # a shard still unreachable: that is the verdict
        message = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        return {"ok": False, "violations": {"every shard readable": [message]}, "counts": {}, "commands": {},
                "settle_seconds": settled, "in_flight_left": len(left), "transfers": {}}  # fmt: skip
    wallets = Wallets(
        payers=sorted(shard_of), other_payees=[], frozen=[], foreign=[], closed=[], lean=[], shard_of=shard_of
    )
    verdict = verify(history, snap, wallets)
    commands = {}
    checks = [["check_ledger"]]
    cdc_seconds = None
    if args.reconcile:
        cdc_seconds = settle.wait_for_cdc(120)
        checks.append(["reconcile", "--wait", "30"])
    for argv in checks:
        command = settle.run_manage(*argv)
        commands[argv[0]] = {"ok": command.ok, "output": command.output[-3000:]}
        if not command.ok:
            verdict.fail(argv[0], "\n".join(command.output.splitlines()[-12:]))
    return {
        "ok": verdict.ok,
        "violations": dict(verdict.violations),
        "counts": verdict.counts,
        "settle_seconds": settled,
        "in_flight_left": len(left),
        # What held each one up: its status, attempts, last error and whether it parked.
        "in_flight": [_stuck(row) for row in left[:50]],
        "cdc_caught_up_after_seconds": cdc_seconds,
        "commands": commands,
        "transfers": transfer_times(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m hosts.verify", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="the client's result files, set-up first")
    parser.add_argument("--client-id", type=int, required=True, help="the API client whose keys the shards hold")
    parser.add_argument("--settle", type=float, default=90, help="seconds for every transfer to become terminal")
    parser.add_argument("--reconcile", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    django.setup()
    document = run(args)
    args.out.write_text(json.dumps(document, default=str))


if __name__ == "__main__":
    main()
