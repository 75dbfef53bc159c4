"""`make bench-reconcile`: fill shards with millions of ledger entries, let the CDC catch up, time `reconcile`.

python -m bench.reconcile [--entries 10000000] [--shards 4] [--wallets N] [--base-port 29500]

On a throw-away stack of its own (var/bench-reconcile): wallets, one deposit each and
completed transfers, generated set-based in SQL on each shard (generate_series), with ids in
the right buckets, so that `check_ledger` passes (`--check-ledger` runs it: it reads
everything into memory, so only for small runs). Then `run_cdc` starts and takes its
initial snapshot of the shards (the catch-up), and `manage.py reconcile` runs under
`/usr/bin/time -v`: its wall time and peak memory (max RSS) are reported, with the CDC
process's peak memory during the reconcile (the store's side runs in its embedded chDB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.stack import ROOT, StackLayout

DEPOSIT = 1_000_000_000  # each wallet's one deposit: no debit can make a balance negative


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000_000, help="ledger entries in all (about)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--wallets", type=int, default=0, help="default: a tenth of the entries")
    parser.add_argument("--dir", type=Path, default=ROOT / "var" / "bench-reconcile")
    parser.add_argument("--base-port", type=int, default=29500, help="control database; shards on the next ports")
    parser.add_argument("--wait", type=float, default=600, help="reconcile --wait")
    parser.add_argument("--catch-up-timeout", type=float, default=7200)
    parser.add_argument("--check-ledger", action="store_true", help="run check_ledger on the generated data")
    parser.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    return parser.parse_args(argv)


# -- generation -----------------------------------------------------------------------------


def generation_sql(
    *, shard: int, shards: int, wallets: int, transfers: int, buckets: list[list[int]], owner: int = 1
) -> list[str]:
    """The statements that fill shard number `shard` (of `shards`).

    Wallet i lives on shard i % shards, in bucket buckets[i % shards][(i // shards) % len];
    transfer k pays 1 + k % 997 from wallet k % W to wallet (k % W + 1 + (k // W) % (W - 1)) % W,
    so payer and payee differ and most transfers cross shards. Every id is a UUIDv7 with its
    bucket in `rand_a` (apps.sharding.ids): a transfer's and a debit's in the payer's bucket,
    a credit's and a payee credit's in the payee's. Entries are numbered per wallet in
    transfer order with running balances, so balances equal the sums of their entries.
    """
    flat = [b for owned in buckets for b in owned]
    starts, total = [], 1
    for owned in buckets:
        starts.append(total)
        total += len(owned)
    lens = [len(owned) for owned in buckets]
    n, s, w = shards, shard, wallets

    def arr(values: list[int]) -> str:
        return "ARRAY[" + ",".join(str(int(v)) for v in values) + "]::int[]"

    return [
        # A bulk load of rows consistent by construction: no fence or foreign-key triggers per row.
        "SET session_replication_role = replica",
        "SET synchronous_commit = off",
        "SET work_mem = '256MB'",
        # A UUIDv7 of a fixed millisecond with `bucket` in rand_a and 62 bits from md5(seed).
        """CREATE FUNCTION pg_temp.bench_id(bucket int, seed text) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
           SELECT (lpad(to_hex(1767225600000::bigint), 12, '0') || '7' || lpad(to_hex(bucket), 3, '0')
                   || to_hex(8 + (get_byte(decode(md5(seed), 'hex'), 0) & 3)) || substr(md5(seed), 2, 15))::uuid $$""",
        f"""CREATE FUNCTION pg_temp.wallet_bucket(i bigint) RETURNS int LANGUAGE sql IMMUTABLE AS $$
           SELECT ({arr(flat)})[({arr(starts)})[(i % {n})::int + 1]
                                 + ((i / {n}) % ({arr(lens)})[(i % {n})::int + 1])::int] $$""",
        """CREATE FUNCTION pg_temp.wallet_id(i bigint) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
           SELECT pg_temp.bench_id(pg_temp.wallet_bucket(i), 'w' || i) $$""",
        # This shard's transfers: paid from or into its wallets.
        f"""CREATE TEMP TABLE tr AS
           SELECT k, payer, payee, 1 + k % 997 AS amount,
                  pg_temp.bench_id(pg_temp.wallet_bucket(payer), 't' || k) AS id
             FROM (SELECT k, k % {w} AS payer, (k % {w} + 1 + (k / {w}) % ({w} - 1)) % {w} AS payee
                     FROM generate_series(1::bigint, {int(transfers)}::bigint) k) t
            WHERE payer % {n} = {s} OR payee % {n} = {s}""",
        f"""CREATE TEMP TABLE mv AS
           SELECT k, payer AS wallet, 'debit'::text AS kind, -amount AS delta, id FROM tr WHERE payer % {n} = {s}
           UNION ALL
           SELECT k, payee, 'credit', amount, id FROM tr WHERE payee % {n} = {s}""",
        f"""INSERT INTO ledger_wallet (id, owner_id, currency, balance_minor, status, last_entry_seq, created_at,
                                      updated_at)
           SELECT pg_temp.wallet_id(i), {int(owner)}, 'USD', {DEPOSIT} + coalesce(m.total, 0), 'active',
                  1 + coalesce(m.moves, 0), now(), now()
             FROM generate_series({s}::bigint, {w - 1}::bigint, {n}) i
             LEFT JOIN (SELECT wallet, sum(delta) AS total, count(*) AS moves FROM mv GROUP BY wallet) m
               ON m.wallet = i""",
        f"""INSERT INTO ledger_entry (id, wallet_id, seq, reference, kind, amount_minor, balance_after_minor,
                                     created_at)
           SELECT pg_temp.bench_id(pg_temp.wallet_bucket(i), 'd' || i), pg_temp.wallet_id(i), 1,
                  'bench-deposit-' || i, 'deposit', {DEPOSIT}, {DEPOSIT}, now()
             FROM generate_series({s}::bigint, {w - 1}::bigint, {n}) i""",
        f"""INSERT INTO ledger_entry (id, wallet_id, seq, reference, kind, amount_minor, balance_after_minor,
                                     created_at)
           SELECT pg_temp.bench_id(pg_temp.wallet_bucket(wallet), kind || k), pg_temp.wallet_id(wallet),
                  1 + row_number() OVER w, id::text, kind, delta, {DEPOSIT} + sum(delta) OVER w, now()
             FROM mv
           WINDOW w AS (PARTITION BY wallet ORDER BY k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)""",
        f"""INSERT INTO transfers_transfer (id, client_id, payer_id, payee_id, amount_minor, currency, status,
                                           failure_reason, request_fingerprint, attempts, last_error, parked_at,
                                           created_at, updated_at)
           SELECT id, {int(owner)}, pg_temp.wallet_id(payer), pg_temp.wallet_id(payee), amount, 'USD',
                  'completed', NULL, 'bench', 1, '', NULL, now(), now()
             FROM tr WHERE payer % {n} = {s}""",
        f"""INSERT INTO transfers_event (transfer_id, from_status, to_status, reason, created_at)
           SELECT tr.id, v.from_status, v.to_status, NULL, now()
             FROM tr, (VALUES (NULL, 'pending', 1), ('pending', 'debited', 2), ('debited', 'completed', 3))
                      AS v(from_status, to_status, step)
            WHERE payer % {n} = {s}
            ORDER BY tr.k, v.step""",
        # Cross-shard transfers only: a same-shard one is credited in its first step, with no outcome row.
        f"""INSERT INTO transfers_payee_credit (transfer_id, payee_id, amount_minor, outcome, reason, created_at)
           SELECT id, pg_temp.wallet_id(payee), amount, 'credited', NULL, now()
             FROM tr WHERE payee % {n} = {s} AND payer % {n} <> {s}""",
        "ANALYZE",
    ]


def generate(servers: list[Any], buckets: list[list[int]], wallets: int, transfers: int, owner: int = 1) -> None:
    import psycopg

    errors: list[BaseException] = []

    def fill(index: int) -> None:
        try:
            with psycopg.connect(servers[index].conninfo(), autocommit=True) as conn:
                for statement in generation_sql(
                    shard=index,
                    shards=len(servers),
                    wallets=wallets,
                    transfers=transfers,
                    buckets=buckets,
                    owner=owner,
                ):
                    conn.execute(statement)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fill, args=(i,)) for i in range(len(servers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


# -- measuring ------------------------------------------------------------------------------


def flushed_positions(servers: list[Any]) -> dict[str, int]:
    import psycopg

    from apps.audit.pgoutput import str_to_lsn

    out = {}
    for server in servers:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            [(lsn,)] = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchall()
            out[server.alias] = str_to_lsn(lsn)
    return out


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int) -> None:
    """Start the process's peak RSS (VmHWM) afresh (Linux: clear_refs 5)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def time_v(args: list[str], log: Path) -> tuple[int, float, int, str]:
    """Run under /usr/bin/time -v: exit code, wall seconds, max RSS (kB), output."""
    started = time.monotonic()
    # INFO: reconcile logs each round's timings (shards, store, transfers).
    env = {**os.environ, "SHARDWALLET_LOG_LEVEL": "INFO"}
    done = subprocess.run(["/usr/bin/time", "-v", *args], capture_output=True, text=True, check=False, env=env)
    wall = time.monotonic() - started
    log.write_text(done.stdout + done.stderr)
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return done.returncode, wall, int(found.group(1)) if found else 0, done.stdout + done.stderr


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    wallets = args.wallets or max(args.shards * 2, args.entries // 10)
    transfers = max(1, (args.entries - wallets) // 2)
    layout = StackLayout(
        dir=args.dir, base_port=args.base_port, redis_port=args.base_port + 49, api_port=args.base_port + 48,
        audit_http_port=args.base_port + 23,
    )  # fmt: skip
    audit_dir = args.dir / "audit"
    env = layout.configure_environment(args.shards, {"SHARDWALLET_AUDIT_DIR": str(audit_dir)})
    layout.reset()
    shutil.rmtree(audit_dir, ignore_errors=True)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from apps.audit.points import store_positions
    from apps.audit.store import reader_client
    from apps.sharding.devstack import Devstack

    shard_map = settings.SHARD_MAP
    stack = Devstack(shard_map, settings.DEVSTACK_DIR, settings.REDIS_URL)
    stack.up()
    cdc: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {
        "shards": args.shards, "wallets": wallets, "transfers": transfers, "entries": wallets + 2 * transfers,
    }  # fmt: skip
    try:
        call_command("migrate_shards", verbosity=0)
        servers = [shard_map.shards[alias] for alias in shard_map.aliases]
        buckets = [shard_map.buckets_of(alias) for alias in shard_map.aliases]
        print(f"generating {results['entries']:,} entries ({wallets:,} wallets, {transfers:,} transfers)"
              f" on {args.shards} shards", flush=True)  # fmt: skip
        started = time.monotonic()
        generate(servers, buckets, wallets, transfers)
        results["generate_seconds"] = round(time.monotonic() - started, 1)
        print(f"  generated in {results['generate_seconds']} s", flush=True)
        if args.check_ledger:
            from apps.transfers.checks import check_ledger

            report = check_ledger()
            results["check_ledger_violations"] = len(report.violations)
            print(f"  check_ledger: {report.entries:,} entries, {len(report.violations)} violation(s)"
                  f" {report.violations[:3]}", flush=True)  # fmt: skip
            if report.violations:
                return 1

        targets = flushed_positions(servers)
        log = (args.dir / "cdc.log").open("wb")
        started = time.monotonic()
        cdc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "run_cdc"], env={**os.environ, **env}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        client = None
        while True:
            if cdc.poll() is not None:
                raise RuntimeError(f"run_cdc exited with {cdc.returncode}; see {args.dir / 'cdc.log'}")
            try:
                client = client or reader_client(layout.audit_http_port)
                positions = store_positions(client)
            except Exception:
                client, positions = None, {}
            if all(a in positions and positions[a].confirmed_lsn >= lsn for a, lsn in targets.items()):
                break
            if time.monotonic() - started > args.catch_up_timeout:
                raise RuntimeError("the CDC did not catch up in time")
            time.sleep(1)
        results["cdc_catch_up_seconds"] = round(time.monotonic() - started, 1)
        print(f"  CDC caught up (initial snapshot of every shard) in {results['cdc_catch_up_seconds']} s", flush=True)

        reset_peak_rss(cdc.pid)
        code, wall, rss, output = time_v(
            [sys.executable, str(ROOT / "manage.py"), "reconcile", "--port", str(layout.audit_http_port), "--wait",
             str(args.wait)],
            args.dir / "reconcile.log",
        )  # fmt: skip
        results.update(
            reconcile_exit=code, reconcile_seconds=round(wall, 1), reconcile_max_rss_mb=round(rss / 1024, 1),
            cdc_peak_rss_during_reconcile_mb=round(peak_rss_kb(cdc.pid) / 1024, 1),
            reconcile_output=[line for line in output.strip().splitlines() if "reconcile" in line][:4],
        )  # fmt: skip
        print(f"  reconcile: exit {code} in {wall:.1f} s, max RSS {rss / 1024:.1f} MB; the CDC process (chDB) peaked"
              f" at {results['cdc_peak_rss_during_reconcile_mb']} MB meanwhile", flush=True)  # fmt: skip
        print("  " + "\n  ".join(results["reconcile_output"]), flush=True)
        (args.dir / "results.json").write_text(json.dumps(results, indent=2))
        print(json.dumps({k: v for k, v in results.items() if k != "reconcile_output"}), flush=True)
        return 0 if code == 0 else 1
    finally:
        if cdc is not None and cdc.poll() is None:
            os.killpg(cdc.pid, signal.SIGTERM)
            try:
                cdc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(cdc.pid, signal.SIGKILL)
        if not args.keep:
            try:
                stack.down(purge=True)
            except OSError:  # Redis writing its dump file while the directory goes: once more
                time.sleep(1)
                stack.down(purge=True)
            shutil.rmtree(audit_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
