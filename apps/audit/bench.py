"""How fast the CDC reader drains a backlog: decode alone, and decode + chDB insert + confirm.

Runs on a scratch database (`shardwallet_cdc_bench`) created on the first shard's server,
with tables shaped like `ledger_wallet` / `ledger_entry`, and a throw-away chDB path, so
it touches neither the shards' data nor the audit store; everything is dropped after.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from apps.audit.pgoutput import Decoder, RowChange
from apps.audit.reader import ShardReader, conninfo, drop_slot
from apps.audit.schema import migrate
from apps.audit.sink import AuditSink
from apps.audit.status import StatusBoard
from apps.audit.stream_state import store_id
from apps.sharding.shardmap import DatabaseServer

BENCH_DB = "shardwallet_cdc_bench"
SLOT = "shardwallet_cdc_bench"
PUBLICATION = "shardwallet_cdc_bench"

DDL = """
CREATE TABLE ledger_wallet (
    id uuid PRIMARY KEY, owner_id bigint NOT NULL, currency varchar(3) NOT NULL, balance_minor bigint NOT NULL,
    status varchar(8) NOT NULL, last_entry_seq bigint NOT NULL, created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL);
CREATE TABLE ledger_entry (
    id uuid PRIMARY KEY, wallet_id uuid NOT NULL, seq bigint NOT NULL, reference varchar(255) NOT NULL,
    kind varchar(12) NOT NULL, amount_minor bigint NOT NULL, balance_after_minor bigint NOT NULL,
    created_at timestamptz NOT NULL);
ALTER TABLE ledger_wallet REPLICA IDENTITY FULL;
ALTER TABLE ledger_entry REPLICA IDENTITY FULL;
-- What the reader asks of every shard (ledger migration 0006), for a shard that has
-- never taken part in a bucket move and serves every bucket.
CREATE TABLE sharding_move_marker (
    id bigserial PRIMARY KEY, kind text NOT NULL, epoch bigint NOT NULL,
    wal_lsn pg_lsn NOT NULL DEFAULT pg_current_wal_insert_lsn());
CREATE FUNCTION sharding_serves(id uuid) RETURNS boolean LANGUAGE sql STABLE AS $$ SELECT true $$;
CREATE TABLE sharding_bucket_owner (bucket integer PRIMARY KEY, state text NOT NULL);
"""

# One transaction: `per_tx` deposits, each an entry insert plus its wallet's update.
LOAD = """
WITH w AS (
    UPDATE ledger_wallet SET balance_minor = balance_minor + 100, last_entry_seq = last_entry_seq + 1,
           updated_at = now()
     WHERE id IN (SELECT id FROM ledger_wallet ORDER BY random() LIMIT %(per_tx)s)
 RETURNING id, last_entry_seq, balance_minor)
INSERT INTO ledger_entry SELECT gen_random_uuid(), id, last_entry_seq, 'bench', 'deposit', 100, balance_minor, now()
  FROM w
"""


@dataclasses.dataclass
class BenchResult:
    changes: int
    transactions: int
    decode_seconds: float
    end_to_end_seconds: float

    @property
    def decode_rate(self) -> float:
        return self.changes / self.decode_seconds

    @property
    def end_to_end_rate(self) -> float:
        return self.changes / self.end_to_end_seconds


def _admin(server: DatabaseServer) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo(dataclasses.replace(server, name="postgres")), autocommit=True)


def run_bench(shard: DatabaseServer, *, changes: int, per_tx: int = 50) -> BenchResult:
    server = dataclasses.replace(shard, alias="bench", name=BENCH_DB)
    with _admin(shard) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    try:
        return _bench(server, changes=changes, per_tx=per_tx)
    finally:
        drop_slot(server, SLOT)
        with _admin(shard) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB)))


def _bench(server: DatabaseServer, *, changes: int, per_tx: int) -> BenchResult:
    import clickhouse_connect

    wallets = max(per_tx * 4, 1000)
    with psycopg.connect(conninfo(server), autocommit=True) as conn:
        conn.execute(DDL)
        conn.execute(
            "INSERT INTO ledger_wallet SELECT gen_random_uuid(), 1, 'USD', 0, 'active', 0, now(), now()"
            " FROM generate_series(1, %s)",
            [wallets],
        )
    client = clickhouse_connect.get_client(interface="chdb", path=tempfile.mkdtemp(prefix="cdc-bench-"))
    migrate(client)
    sink = AuditSink(client)
    store = store_id(sink)
    board = StatusBoard([server.alias], "chdb", None)

    def reader(stop: threading.Event) -> ShardReader:
        return ShardReader(
            server, sink, board, stop, slot=SLOT, store=store, publication=PUBLICATION,
            tables=["ledger_wallet", "ledger_entry"], batch_max_changes=20_000, batch_max_seconds=0.2,
        )  # fmt: skip

    # 1. Create the slot (with its initial snapshot of the wallets), then stop reading.
    stop = threading.Event()
    first = reader(stop)
    first.start()
    while not board.shards[server.alias].connected:
        time.sleep(0.05)
    stop.set()
    first.join()

    # 2. The backlog: row changes the slot holds while nobody reads.
    transactions = max(1, changes // (2 * per_tx))
    with psycopg.connect(conninfo(server), autocommit=True) as conn:
        for _ in range(transactions):
            conn.execute(LOAD, {"per_tx": per_tx})
    # 3. Decode alone: peek the same backlog through the SQL interface (nothing confirmed).
    decode_seconds, decoded = _decode_only(server)
    # 4. End to end: a new reader drains the slot into chDB, confirming as it goes.
    before = board.shards[server.alias].changes_written
    stop = threading.Event()
    second = reader(stop)
    started = time.perf_counter()
    second.start()
    while board.shards[server.alias].changes_written - before < decoded:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    second.join()
    written = board.shards[server.alias].changes_written - before
    if written != decoded:
        raise RuntimeError(f"decoded {decoded} changes but the reader wrote {written}")
    return BenchResult(written, transactions, decode_seconds, elapsed)


def _decode_only(server: DatabaseServer) -> tuple[float, int]:
    with psycopg.connect(conninfo(server), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
            " 'proto_version', '1', 'publication_names', %s)",
            [SLOT, PUBLICATION],
        ).fetchall()
    decoder = Decoder()
    started = time.perf_counter()
    count = 0
    for (data,) in rows:
        if isinstance(decoder.decode(bytes(data)), RowChange):
            count += 1
    return time.perf_counter() - started, count
