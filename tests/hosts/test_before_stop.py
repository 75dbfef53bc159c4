"""A member's clean stop does not wait for a logical reader that is behind: the `before_stop`
command Patroni runs ends the logical WAL senders first. Real server, a real replication client
(on the CDC's own connection string) that does not read while megabytes of changes wait; without
the command, the fast stop waits for that client (in a switchover: 50-60 s of a primary refusing
every connection, `make test-hosts` (d))."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg2
import psycopg2.extras
import pytest
from django.conf import settings

from apps.audit.reader import conninfo as cdc_conninfo
from apps.sharding.devstack import PostgresCluster, postgres_bindir
from apps.sharding.shardmap import DatabaseServer
from hosts.patroni import PatroniMember, before_stop_command
from tests.factories import free_port

pytestmark = pytest.mark.slow

SLOT = "sw_test_before_stop"
ROWS, ROW_BYTES = 3000, 10_000  # 30 MB of decoded changes: far more than both sockets' buffers
STOP_SECONDS = 30  # pg_ctl's bound; without the command the stop waits for the reader (for ever here)


@pytest.fixture
def server(devstack: object) -> Iterator[PostgresCluster]:
    port = free_port()
    root = Path(settings.DEVSTACK_DIR) / f"before-stop-{port}"
    cluster = PostgresCluster(DatabaseServer("before_stop", "127.0.0.1", port, "before_stop"), root / "pg")
    # The server never gives up on the reader by itself: only the command can end it.
    cluster.extra_conf = "wal_sender_timeout = 0\n"
    cluster.initialise()
    cluster.start()
    try:
        cluster.ensure_database()
        yield cluster
    finally:
        if cluster.is_running():
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def test_the_before_stop_command_frees_a_clean_stop_from_a_logical_reader_behind(server: PostgresCluster) -> None:
    with psycopg.connect(server.server.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE rows_to_send (n int PRIMARY KEY, body text NOT NULL)")
    reader = psycopg2.connect(
        cdc_conninfo(server.server), connection_factory=psycopg2.extras.LogicalReplicationConnection
    )
    try:
        cursor = reader.cursor()
        cursor.create_replication_slot(SLOT, output_plugin="test_decoding")
        with psycopg.connect(server.server.conninfo(), autocommit=True) as writer:
            writer.execute(
                "INSERT INTO rows_to_send SELECT n, repeat('x', %s) FROM generate_series(1, %s) n", [ROW_BYTES, ROWS]
            )
        cursor.start_replication(slot_name=SLOT, decode=False, status_interval=1)
        time.sleep(1)  # the sender is streaming; the reader never reads
        member = PatroniMember(
            "before_stop", "m0", "127.0.0.1", server.server.port, 0, server.data_dir, server.data_dir.parent / "m0.yml"
        )
        command = before_stop_command(member, {}, socket_dir=None)
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        pg_ctl = [str(postgres_bindir() / "pg_ctl"), "stop", "-D", str(server.data_dir), "-m", "fast"]
        stop = subprocess.run(
            server.as_postgres([*pg_ctl, "-w", "-t", str(STOP_SECONDS)]), capture_output=True, text=True, check=False
        )
        assert stop.returncode == 0, stop.stdout + stop.stderr
        # The slot kept its place: the reader goes on from it at the next start (on the next primary).
        server.start()
        with psycopg.connect(server.server.conninfo(), autocommit=True) as conn:
            [(active, restart_lsn)] = conn.execute(
                "SELECT active, restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = %s", [SLOT]
            ).fetchall()
        assert (active, restart_lsn) == (False, True)
    finally:
        reader.close()
