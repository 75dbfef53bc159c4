"""A shard added to the map while `run_cdc` runs is followed by the same process: its own
slot, publication and snapshot, and a place in the status, /health and /metrics.

The new shard is a new database on the control database's server: a server of its own
as far as the CDC process can tell, which sees a host, a port and a database name (the
replication slot's name is per server, so not one of the shards' servers).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from io import StringIO
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.test import Client

from apps.audit.reader import conninfo, drop_slot
from apps.audit.reconcile import reconcile
from apps.sharding.ids import bucket_of
from apps.sharding.mapstore import live_map, register_connections, save_server
from apps.sharding.routing import refresh_shard_map, shard_map
from apps.sharding.shard_setup import seed_shard
from apps.sharding.shardmap import DatabaseServer
from tests.audit.cdc import CdcProcess, wait_until
from tests.audit.moves import control_epoch, move_bucket, restore_buckets
from tests.factories import ALL_DATABASES, make_client, make_wallet, raw_query

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

NEW_ALIAS = "shard_02"
HANDED_OVER = 302  # a bucket of shard_00 in the test map that no other test uses


@pytest.fixture(scope="module", autouse=True)
def new_database(django_db_setup: None) -> Iterator[DatabaseServer]:
    """The new shard's database, known to this test process from before its tests start (the
    test case only lets a test use the databases it knew when it began), but not yet in the map."""
    host = settings.SHARD_MAP.control
    server = DatabaseServer(NEW_ALIAS, host.host, host.port, f"shardwallet_cdc_{uuid.uuid4().hex[:8]}", host.user)
    admin = f"host={host.host} port={host.port} user={host.user} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{server.name}"')
    register_connections(dataclasses.replace(settings.SHARD_MAP, shards={NEW_ALIAS: server}))
    try:
        yield server
    finally:
        connections[NEW_ALIAS].close()
        del connections[NEW_ALIAS]
        del connections.settings[NEW_ALIAS]
        settings.DATABASES.pop(NEW_ALIAS, None)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{server.name}" WITH (FORCE)')


@pytest.fixture
def new_shard(cdc: CdcProcess, new_database: DatabaseServer) -> Iterator[DatabaseServer]:
    """The new shard; afterwards out of the map again, its bucket back on shard_00."""
    yield new_database
    cdc.stop()  # its slot on the new shard is released, then dropped
    drop_slot(new_database, cdc.slot)
    restore_buckets([HANDED_OVER])
    raw_query("default", "DELETE FROM sharding_server WHERE alias = %s", [NEW_ALIAS])
    raw_query("default", "UPDATE sharding_map_state SET epoch = %s WHERE id = 1", [control_epoch() + 1])
    live_map.forget()
    refresh_shard_map()


def test_a_shard_added_to_the_map_is_followed_without_a_restart(
    cdc: CdcProcess, new_shard: DatabaseServer, settings: Any
) -> None:
    settings.AUDIT_DIR = cdc.dir  # where /metrics, /health and cdc_status read this process's status
    settings.AUDIT_CDC_EXPECTED = False
    owner, _ = make_client()
    cdc.start()
    assert cdc.process is not None
    pid = cdc.process.pid
    assert set(cdc.status()["shards"]) == {"shard_00", "shard_01"}  # type: ignore[index]

    # As adding a shard does: the server joins the control map (a new epoch), is migrated
    # and seeded, then a bucket moves onto it.
    save_server(new_shard)
    raw_query("default", "UPDATE sharding_map_state SET epoch = %s WHERE id = 1", [control_epoch() + 1])
    refresh_shard_map()
    assert NEW_ALIAS in shard_map().shards
    call_command("migrate", database=NEW_ALIAS, interactive=False, verbosity=0)
    seed_shard(NEW_ALIAS, shard_map())
    move_bucket("shard_00", NEW_ALIAS, HANDED_OVER)
    wallet = make_wallet(owner, funded=42, shard=NEW_ALIAS)
    assert bucket_of(wallet.id) == HANDED_OVER

    cdc.wait_connected([NEW_ALIAS], timeout=60)
    client = cdc.client()

    def stored() -> list[tuple[Any, ...]]:
        return client.query(
            "SELECT shard, balance_minor FROM audit.wallets FINAL WHERE wallet_id = {id:UUID} AND is_deleted = 0",
            parameters={"id": str(wallet.id)},
        ).result_rows

    wait_until(lambda: stored() == [(NEW_ALIAS, 42)], 30, "the new shard's wallet in the store")
    assert cdc.process.pid == pid  # the same process: no restart
    with psycopg.connect(conninfo(new_shard), autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [cdc.slot]).fetchone()
        assert conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [cdc.publication]).fetchone()
    assert client.query(
        "SELECT shard, kind FROM audit.move_journal FINAL WHERE first_bucket = {b:Int32} ORDER BY commit_time",
        parameters={"b": HANDED_OVER},
    ).result_rows == [("shard_00", "fence"), (NEW_ALIAS, "own")]
    report = reconcile(client, wait=10)
    assert report.ok, report.differences

    metrics = Client().get("/metrics").content.decode()
    assert f'shardwallet_cdc_lag_seconds{{shard="{NEW_ALIAS}"}}' in metrics
    component = Client().get("/health").json()["components"]["audit_cdc"]
    assert set(component["shards"]) == {"shard_00", "shard_01", NEW_ALIAS}
    assert component["shards"][NEW_ALIAS]["connected"] is True
    out = StringIO()
    call_command("cdc_status", stdout=out)
    assert f"  {NEW_ALIAS}: connected" in out.getvalue()
