"""`make bench BENCH_ARGS="--history 10000000"`: the bench's phases against a realistic history.

Before the ceiling and the phases, the shards are filled set-based in SQL (not through the
API) with a consistent history: wallets with a deposit each and completed transfers
between them, about a tenth as many wallets as entries (the generator of `make
bench-reconcile`). The history's wallets belong to the bench's API client and are funded,
so the phases pay between a sample of them and the bench's own wallets. With the CDC on,
the bench waits for its initial snapshot of the history before measuring anything.

After the phases, `at_size` times what operators run against the whole ledger and what
runs per call at any size (the sweeper, a drain with nothing to claim, a `/metrics`
scrape, `check_ledger`, `reconcile`), and `table_sizes` reports each sharded table's and
its indexes' bytes per stored transfer.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from typing import Any

from bench.reconcile import flushed_positions, generate, time_v
from bench.stack import ROOT


def load_history(entries: int, owner: int) -> dict[str, Any]:
    """Fill every shard of the map with about `entries` ledger entries; return what was made."""
    from django.conf import settings

    shard_map = settings.SHARD_MAP
    servers = [shard_map.shards[alias] for alias in shard_map.aliases]
    buckets = [shard_map.buckets_of(alias) for alias in shard_map.aliases]
    wallets = max(len(servers) * 2, entries // 10)
    transfers = max(1, (entries - wallets) // 2)
    print(f"history: {wallets + 2 * transfers:,} entries ({wallets:,} wallets, {transfers:,} transfers)", flush=True)
    started = time.monotonic()
    generate(servers, buckets, wallets, transfers, owner=owner)
    seconds = round(time.monotonic() - started, 1)
    print(f"  generated in {seconds} s", flush=True)
    return {"wallets": wallets, "transfers": transfers, "entries": wallets + 2 * transfers, "seconds": seconds}


def sample_wallets(count: int) -> list[str]:
    """`count` of the history's wallets, spread over every shard (a random sample of each)."""
    from django.db import connections

    from apps.sharding.routing import shard_aliases

    aliases = shard_aliases()
    ids: list[str] = []
    for alias in aliases:
        with connections[alias].cursor() as cursor:
            cursor.execute(
                "SELECT id::text FROM ledger_wallet TABLESAMPLE SYSTEM (5) WHERE status = 'active' LIMIT %s",
                [count // len(aliases)],
            )
            ids += [row[0] for row in cursor.fetchall()]
    return ids


def wait_for_snapshot(audit_http_port: int, timeout: float = 7200) -> float:
    """Seconds until the CDC's store holds every shard up to its current WAL position."""
    from django.conf import settings

    from apps.audit.points import store_positions
    from apps.audit.store import reader_client

    servers = [settings.SHARD_MAP.shards[alias] for alias in settings.SHARD_MAP.aliases]
    targets = flushed_positions(servers)
    started = time.monotonic()
    client, last_print = None, 0.0
    while True:
        try:
            client = client or reader_client(audit_http_port)
            positions = store_positions(client)
        except Exception:  # the store not up yet, or busy with the snapshot
            client, positions = None, {}
        if all(alias in positions and positions[alias].confirmed_lsn >= lsn for alias, lsn in targets.items()):
            return round(time.monotonic() - started, 1)
        if time.monotonic() - started > timeout:
            raise SystemExit("the CDC did not take its snapshot of the history in time")
        if time.monotonic() - last_print > 30:
            last_print = time.monotonic()
            print(f"  waiting for the CDC's snapshot of the history ({time.monotonic() - started:.0f} s)", flush=True)
        time.sleep(2)


def table_sizes() -> dict[str, Any]:
    """Bytes per stored transfer of each sharded table and of its indexes, summed over shards."""
    from django.db import connections

    from apps.sharding.placement import BUCKET_COLUMNS
    from apps.sharding.routing import shard_aliases

    tables: dict[str, dict[str, int]] = {}
    transfers = 0
    for alias in shard_aliases():
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM transfers_transfer")
            transfers += cursor.fetchone()[0]
            cursor.execute(
                "SELECT c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid), c.reltuples::bigint"
                " FROM pg_class c WHERE c.relname = ANY(%s) AND c.relkind = 'r'",
                [list(BUCKET_COLUMNS)],
            )
            for name, table, indexes, rows in cursor.fetchall():
                seen = tables.setdefault(name, {"table_bytes": 0, "index_bytes": 0, "rows": 0})
                seen["table_bytes"] += table
                seen["index_bytes"] += indexes
                seen["rows"] += max(rows, 0)
    per = max(transfers, 1)
    return {
        "transfers": transfers,
        "tables": {
            name: {
                **sizes,
                "table_bytes_per_transfer": round(sizes["table_bytes"] / per, 1),
                "index_bytes_per_transfer": round(sizes["index_bytes"] / per, 1),
            }
            for name, sizes in sorted(tables.items())
        },
    }


def sizes_table(sizes: dict[str, Any]) -> str:
    lines = [
        f"table and index sizes ({sizes['transfers']:,} transfers stored)",
        f"{'table':<24} {'rows':>12} {'table MB':>9} {'index MB':>9} {'B/transfer':>11} {'idx B/tr':>9}",
    ]
    total_table = total_index = 0.0
    for name, s in sizes["tables"].items():
        total_table += s["table_bytes_per_transfer"]
        total_index += s["index_bytes_per_transfer"]
        lines.append(
            f"{name:<24} {s['rows']:>12,} {s['table_bytes'] / 2**20:>9.1f} {s['index_bytes'] / 2**20:>9.1f}"
            f" {s['table_bytes_per_transfer']:>11.0f} {s['index_bytes_per_transfer']:>9.0f}"
        )
    lines.append(f"{'all':<24} {'':>12} {'':>9} {'':>9} {total_table:>11.0f} {total_index:>9.0f}")
    return "\n".join(lines)


def _timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return round((time.perf_counter() - started) * 1000, 1)


def at_size(api_url: str, audit_http_port: int | None) -> dict[str, Any]:
    """What per-call paths and whole-ledger checks cost on the ledger as it now stands."""
    from django.db import connections

    from apps.sharding.routing import shard_aliases
    from apps.transfers.saga import drain_debited
    from apps.transfers.tasks import sweep_stalled_transfers

    out: dict[str, Any] = {
        "sweeper_ms": _timed(sweep_stalled_transfers),
        "empty_drain_ms": {alias: _timed(lambda a=alias: drain_debited(a)) for alias in shard_aliases()},
        "metrics_scrape_ms": _timed(
            lambda: urllib.request.urlopen(f"{api_url}/metrics", timeout=60).read()  # noqa: S310 (our own http URL)
        ),
    }
    out["admin_changelist_ms"] = admin_changelists()
    connections.close_all()
    manage = [sys.executable, str(ROOT / "manage.py")]
    logs = ROOT / "var" / "bench"
    code, wall, rss, _ = time_v([*manage, "check_ledger"], logs / "check_ledger.log")
    out["check_ledger"] = {"exit": code, "seconds": round(wall, 1), "max_rss_mb": round(rss / 1024, 1)}
    if audit_http_port is not None:
        code, wall, rss, _ = time_v(
            [*manage, "reconcile", "--port", str(audit_http_port), "--wait", "600"], logs / "reconcile.log"
        )
        out["reconcile"] = {"exit": code, "seconds": round(wall, 1), "max_rss_mb": round(rss / 1024, 1)}
    return out


def admin_changelists() -> dict[str, float]:
    """Milliseconds to render the first page of the sharded changelists, as a superuser."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    browser = Client()
    browser.force_login(user)
    timings = {}
    for page in ("ledger/wallet", "ledger/ledgerentry", "transfers/transfer"):
        started = time.perf_counter()
        response = browser.get(f"/admin/{page}/")
        timings[page] = round((time.perf_counter() - started) * 1000, 1) if response.status_code == 200 else -1.0
    return timings


def at_size_line(figures: dict[str, Any]) -> str:
    drains = ", ".join(f"{a} {ms} ms" for a, ms in figures["empty_drain_ms"].items())
    text = (
        f"at this size: sweeper {figures['sweeper_ms']} ms; a drain with nothing to claim: {drains};"
        f" /metrics {figures['metrics_scrape_ms']} ms; admin lists {figures['admin_changelist_ms']} ms;"
        f" check_ledger {figures['check_ledger']['seconds']} s"
        f" (max RSS {figures['check_ledger']['max_rss_mb']} MB, exit {figures['check_ledger']['exit']})"
    )
    if "reconcile" in figures:
        r = figures["reconcile"]
        text += f"; reconcile {r['seconds']} s (max RSS {r['max_rss_mb']} MB, exit {r['exit']})"
    return text
