"""A CDC that stops reading for longer than the servers' `tcp_user_timeout` (busy writing a
batch to the store) keeps its stream: the shard's walsender waits for it instead of cutting it.
Real server, real replication connection on the CDC's own connection string; the server's
default (5 s, docs/DEPLOY.md) would end this one while it does not read."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import psycopg2
import psycopg2.extras
import pytest
from django.conf import settings

from apps.audit.reader import CDC_TCP_USER_TIMEOUT_MS, conninfo
from apps.sharding.devstack import VANISHED_CLIENTS_CONF
from apps.sharding.shardmap import DatabaseServer

pytestmark = pytest.mark.slow

SLOT = "sw_test_slow_reader"
# In a schema of its own: tests running beside this one check which tables `public` holds.
SCHEMA = "sw_test_slow_reader"
TABLE = f"{SCHEMA}.rows_to_send"
ROWS, ROW_BYTES = 3000, 10_000  # 30 MB of decoded changes: far more than both sockets' buffers
NOT_READING_SECONDS = 9  # past the servers' 5 s


@pytest.fixture
def server(devstack: object) -> Iterator[DatabaseServer]:
    server = settings.SHARD_MAP.shards["shard_01"]
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f"CREATE TABLE {TABLE} (n int PRIMARY KEY, body text NOT NULL)")
        if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [SLOT]).fetchone():
            conn.execute("SELECT pg_drop_replication_slot(%s)", [SLOT])
    yield server
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        for _ in range(50):  # the walsender may still be ending
            if not conn.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active", [SLOT]
            ).fetchone():
                break
            time.sleep(0.1)
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", [SLOT]
        )
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def test_the_servers_give_up_on_a_silent_client_within_seconds() -> None:
    assert "tcp_user_timeout = 5000" in VANISHED_CLIENTS_CONF
    assert CDC_TCP_USER_TIMEOUT_MS > 5000 * 2


def test_a_cdc_that_stops_reading_for_a_while_keeps_its_stream(server: DatabaseServer) -> None:
    conn = psycopg2.connect(conninfo(server), connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        cur = conn.cursor()
        cur.create_replication_slot(SLOT, output_plugin="test_decoding")
        rows = f"INSERT INTO {TABLE} SELECT n, repeat('x', %s) FROM generate_series(1, %s) n"  # noqa: S608 - our name
        with psycopg.connect(server.conninfo(), autocommit=True) as writer:
            writer.execute(rows, [ROW_BYTES, ROWS])
        cur.start_replication(slot_name=SLOT, decode=False, status_interval=1)
        time.sleep(NOT_READING_SECONDS)  # the server fills both sockets' buffers, then waits on us
        received = 0
        deadline = time.monotonic() + 120
        while received < ROWS and time.monotonic() < deadline:
            message = cur.read_message()  # raises once the server has dropped the connection
            if message is None:
                time.sleep(0.01)
                continue
            if b"INSERT" in message.payload:
                received += 1
        assert received == ROWS
    finally:
        conn.close()
