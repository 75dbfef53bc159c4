"""The raw-SQL ceilings: the SQL transfers need, run by pgbench on the same servers.

Per transfer (`SCRIPT`, against which single requests are measured): a debit transaction
(guarded balance update + ledger entry + transfer row + its events), a credit transaction
(guarded balance update + ledger entry + payee outcome) and a completion transaction
(guarded status update + event): three commits, as in the saga.

Set-based (`SET_SCRIPT`, against which batches are measured): the same three transactions
for N transfers at once (N = the batch size), each a handful of set-based statements: the
debit locks the payers in id order, updates each payer once for all its transfers, inserts
the entries, transfers and events; the credit locks the payees, updates them, inserts the
entries and payee outcomes (guarded: not credited yet); the completion updates the N
transfers and inserts their events. Three commits per N transfers.

The tables are copies of the real ones (same columns, indexes and constraints) in a `bench`
schema, so the run leaves the ledger untouched. Same servers, same durability settings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

from apps.sharding.devstack import postgres_bindir
from apps.sharding.shardmap import DatabaseServer

TABLES = ["ledger_wallet", "ledger_entry", "transfers_transfer", "transfers_event", "transfers_payee_credit"]

SCRIPT = """
\\set a random(1, :wallets)
\\set b 1 + (:a + random(0, :wallets - 2)) % :wallets
SELECT gen_random_uuid() AS tid, gen_random_uuid() AS e1, gen_random_uuid() AS e2 \\gset
BEGIN;
WITH moved AS (
  UPDATE ledger_wallet SET balance_minor = balance_minor - 1, last_entry_seq = last_entry_seq + 1, updated_at = now()
   WHERE id = (SELECT id FROM bench_ids WHERE n = :a) AND balance_minor >= 1 AND status = 'active'
     AND NOT EXISTS (SELECT 1 FROM ledger_entry WHERE wallet_id = (SELECT id FROM bench_ids WHERE n = :a)
                     AND reference = CAST(:tid AS text) AND kind = 'debit')
  RETURNING id, balance_minor, last_entry_seq)
INSERT INTO ledger_entry (id, wallet_id, seq, reference, kind, amount_minor, balance_after_minor, created_at)
SELECT CAST(:e1 AS uuid), id, last_entry_seq, CAST(:tid AS text), 'debit', -1, balance_minor, now() FROM moved;
WITH t AS (
  INSERT INTO transfers_transfer (id, client_id, payer_id, payee_id, amount_minor, currency, status,
     request_fingerprint, attempts, last_error, created_at, updated_at)
  VALUES (CAST(:tid AS uuid), 1, (SELECT id FROM bench_ids WHERE n = :a), (SELECT id FROM bench_ids WHERE n = :b), 1, 'USD',
     'debited', 'x', 0, '', now(), now()) RETURNING id)
INSERT INTO transfers_event (transfer_id, from_status, to_status, created_at)
SELECT id, s.f, s.t, now() FROM t, (VALUES (NULL, 'pending'), ('pending', 'debited')) AS s(f, t);
COMMIT;
BEGIN;
WITH moved AS (
  UPDATE ledger_wallet SET balance_minor = balance_minor + 1, last_entry_seq = last_entry_seq + 1, updated_at = now()
   WHERE id = (SELECT id FROM bench_ids WHERE n = :b) AND status = 'active'
     AND NOT EXISTS (SELECT 1 FROM transfers_payee_credit WHERE transfer_id = CAST(:tid AS uuid))
  RETURNING id, balance_minor, last_entry_seq),
entry AS (
  INSERT INTO ledger_entry (id, wallet_id, seq, reference, kind, amount_minor, balance_after_minor, created_at)
  SELECT CAST(:e2 AS uuid), id, last_entry_seq, CAST(:tid AS text), 'credit', 1, balance_minor, now() FROM moved RETURNING wallet_id)
INSERT INTO transfers_payee_credit (transfer_id, payee_id, amount_minor, outcome, created_at)
SELECT CAST(:tid AS uuid), wallet_id, 1, 'credited', now() FROM entry;
COMMIT;
BEGIN;
WITH done AS (
  UPDATE transfers_transfer SET status = 'completed', updated_at = now() WHERE id = CAST(:tid AS uuid) AND status = 'debited'
  RETURNING id)
INSERT INTO transfers_event (transfer_id, from_status, to_status, created_at)
SELECT id, 'debited', 'completed', now() FROM done;
COMMIT;
"""


# N transfers per iteration (`-D n=...`); `batch` is a temporary table of this session.
SET_SCRIPT = """
BEGIN;
CREATE TEMP TABLE IF NOT EXISTS batch (tid uuid, payer uuid, payee uuid, debit uuid, credit uuid);
DELETE FROM batch;
INSERT INTO batch
SELECT gen_random_uuid(), p.id, q.id, gen_random_uuid(), gen_random_uuid()
FROM (SELECT a, 1 + (a + floor(random() * (:wallets - 1))::int) % :wallets AS b
      FROM (SELECT 1 + floor(random() * :wallets)::int AS a FROM generate_series(1, :n)) AS r) AS pair
JOIN bench_ids p ON p.n = pair.a JOIN bench_ids q ON q.n = pair.b;
SELECT count(*) FROM (SELECT id FROM ledger_wallet WHERE id IN (SELECT payer FROM batch) ORDER BY id FOR UPDATE) AS l;
WITH per_payer AS (SELECT payer, count(*) AS k FROM batch GROUP BY payer),
moved AS (
  UPDATE ledger_wallet w SET balance_minor = balance_minor - k, last_entry_seq = last_entry_seq + k, updated_at = now()
    FROM per_payer WHERE w.id = per_payer.payer AND w.balance_minor >= k AND w.status = 'active'
  RETURNING w.id, w.balance_minor, w.last_entry_seq, k),
numbered AS (SELECT b.*, row_number() OVER (PARTITION BY b.payer ORDER BY b.tid) AS i FROM batch b)
INSERT INTO ledger_entry (id, wallet_id, seq, reference, kind, amount_minor, balance_after_minor, created_at)
SELECT n.debit, n.payer, m.last_entry_seq - m.k + n.i, n.tid::text, 'debit', -1, m.balance_minor + m.k - n.i, now()
FROM numbered n JOIN moved m ON m.id = n.payer;
INSERT INTO transfers_transfer (id, client_id, payer_id, payee_id, amount_minor, currency, status,
   request_fingerprint, attempts, last_error, created_at, updated_at)
SELECT tid, 1, payer, payee, 1, 'USD', 'debited', 'x', 0, '', now(), now() FROM batch;
INSERT INTO transfers_event (transfer_id, from_status, to_status, created_at)
SELECT tid, s.f, s.t, now() FROM batch, (VALUES (NULL, 'pending'), ('pending', 'debited')) AS s(f, t);
COMMIT;
BEGIN;
SELECT count(*) FROM (SELECT id FROM ledger_wallet WHERE id IN (SELECT payee FROM batch) ORDER BY id FOR UPDATE) AS l;
WITH todo AS (
  SELECT b.* FROM batch b WHERE NOT EXISTS (SELECT 1 FROM transfers_payee_credit pc WHERE pc.transfer_id = b.tid)),
per_payee AS (SELECT payee, count(*) AS k FROM todo GROUP BY payee),
moved AS (
  UPDATE ledger_wallet w SET balance_minor = balance_minor + k, last_entry_seq = last_entry_seq + k, updated_at = now()
    FROM per_payee WHERE w.id = per_payee.payee AND w.status = 'active'
  RETURNING w.id, w.balance_minor, w.last_entry_seq, k),
numbered AS (SELECT t.*, row_number() OVER (PARTITION BY t.payee ORDER BY t.tid) AS i FROM todo t),
entries AS (
  INSERT INTO ledger_entry (id, wallet_id, seq, reference, kind, amount_minor, balance_after_minor, created_at)
  SELECT n.credit, n.payee, m.last_entry_seq - m.k + n.i, n.tid::text, 'credit', 1, m.balance_minor - m.k + n.i, now()
  FROM numbered n JOIN moved m ON m.id = n.payee RETURNING reference)
INSERT INTO transfers_payee_credit (transfer_id, payee_id, amount_minor, outcome, created_at)
SELECT n.tid, n.payee, 1, 'credited', now() FROM numbered n JOIN moved m ON m.id = n.payee;
COMMIT;
BEGIN;
WITH done AS (
  UPDATE transfers_transfer t SET status = 'completed', updated_at = now()
    FROM batch b WHERE t.id = b.tid AND t.status = 'debited' RETURNING t.id)
INSERT INTO transfers_event (transfer_id, from_status, to_status, created_at)
SELECT id, 'debited', 'completed', now() FROM done;
COMMIT;
"""


@dataclass
class CeilingResult:
    transfers_per_second: float
    clients: int
    by_clients: dict[int, float]


def _conninfo(server: DatabaseServer) -> str:
    return f"host={server.host} port={server.port} dbname={server.name} user={server.user}"


def prepare(servers: list[DatabaseServer], wallets_per_shard: int) -> None:
    """Create the bench schema with copies of the real tables and funded wallets."""
    for server in servers:
        with psycopg.connect(_conninfo(server), autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
            conn.execute("CREATE SCHEMA bench")
            for table in TABLES:
                conn.execute(f"CREATE TABLE bench.{table} (LIKE public.{table} INCLUDING ALL)")
                # LIKE does not copy storage parameters (fillfactor, autovacuum): copy them too.
                [(options,)] = conn.execute(
                    "SELECT reloptions FROM pg_class WHERE oid = %s::regclass", [f"public.{table}"]
                ).fetchall()
                if options:
                    conn.execute(f"ALTER TABLE bench.{table} SET ({', '.join(options)})")
            conn.execute(
                "INSERT INTO bench.ledger_wallet (id, owner_id, currency, balance_minor, status, last_entry_seq,"
                " created_at, updated_at) SELECT gen_random_uuid(), 1, 'USD', 1000000000000, 'active', 0, now(), now()"
                " FROM generate_series(1, %s)",
                [wallets_per_shard],
            )
            conn.execute(
                "CREATE TABLE bench.bench_ids AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM bench.ledger_wallet"
            )
            conn.execute("ALTER TABLE bench.bench_ids ADD PRIMARY KEY (n)")
            conn.execute("VACUUM ANALYZE")


def drop(servers: list[DatabaseServer]) -> None:
    for server in servers:
        with psycopg.connect(_conninfo(server), autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")


def _run(
    servers: list[DatabaseServer], clients: int, seconds: int, wallets: int, script: Path, per_iteration: int = 1
) -> float:
    """Transfers per second over all shards: pgbench's iterations per second times `per_iteration`."""
    pgbench = shutil.which("pgbench") or str(postgres_bindir() / "pgbench")
    per_shard = max(1, clients // len(servers))
    procs = []
    for server in servers:
        args = [
            pgbench, "-n", "-h", server.host, "-p", str(server.port), "-U", server.user,
            "-c", str(per_shard), "-j", str(min(per_shard, 2)), "-T", str(seconds), "-M", "prepared",
            "-D", f"wallets={wallets}", "-D", f"n={per_iteration}", "-f", str(script), server.name,
        ]  # fmt: skip
        env = {"PGOPTIONS": "-c search_path=bench -c client_min_messages=warning", "PATH": "/usr/bin:/bin"}
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    total = 0.0
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 60)
        match = re.search(r"tps = ([\d.]+)", out)
        if proc.returncode != 0 or not match:
            raise RuntimeError(f"pgbench failed: {err or out}")
        total += float(match.group(1))
    return total * per_iteration


def measure(
    servers: list[DatabaseServer],
    *,
    wallets_per_shard: int,
    seconds: int,
    client_counts: list[int],
    workdir: Path,
    set_size: int = 0,
    set_client_counts: list[int] | None = None,
) -> tuple[CeilingResult, CeilingResult | None]:
    """Run the per-transfer script on every shard at once for each client count (the best
    total wins), then, with `set_size`, the set-based script of that many transfers."""
    script = workdir / "ceiling.sql"
    script.write_text(SCRIPT)
    set_script = workdir / "ceiling-set.sql"
    set_script.write_text(SET_SCRIPT)
    prepare(servers, wallets_per_shard)
    try:
        by_clients = {c: _run(servers, c, seconds, wallets_per_shard, script) for c in client_counts}
        by_set_clients = {
            c: _run(servers, c, seconds, wallets_per_shard, set_script, per_iteration=set_size)
            for c in (set_client_counts or client_counts)
            if set_size
        }
    finally:
        drop(servers)
    return _best(by_clients), _best(by_set_clients) if by_set_clients else None


def _best(by_clients: dict[int, float]) -> CeilingResult:
    best = max(by_clients, key=lambda c: by_clients[c])
    return CeilingResult(transfers_per_second=by_clients[best], clients=best, by_clients=by_clients)
