"""The CDC runs as a login that may replicate and read, not as the tables' owner."""

from __future__ import annotations

from io import StringIO

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command

from apps.audit.reader import captured_tables, drop_slot, ensure_publication
from apps.sharding.db_roles import CDC_ROLE
from tests.audit.cdc import CdcProcess, wait_until
from tests.audit.helpers import caught_up
from tests.audit.test_cdc import transfer
from tests.audit.test_stream_stops import FAST, wait_stopped
from tests.factories import ALL_DATABASES, make_client, make_wallet, raw_query

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

LOGIN = "sw_cdc_probe"


def _server(alias: str):
    return settings.SHARD_MAP.shards.get(alias) or settings.SHARD_MAP.control


def _connect(alias: str, user: str) -> psycopg.Connection:
    server = _server(alias)
    return psycopg.connect(host=server.host, port=server.port, dbname=server.name, user=user, autocommit=True)


@pytest.fixture
def cdc_login() -> str:
    """`LOGIN REPLICATION IN ROLE shardwallet_cdc` on every database of the stack (trust auth)."""
    for alias in ("default", *settings.SHARD_MAP.shards):
        with _connect(alias, "postgres") as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [LOGIN]).fetchone():
                conn.execute(f"CREATE ROLE {LOGIN} LOGIN REPLICATION IN ROLE {CDC_ROLE}")
    return LOGIN


def test_the_login_may_not_create_tables_or_change_money(cdc_login: str) -> None:
    with _connect("shard_00", cdc_login) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_wallet").fetchone() is not None
        for statement in (
            "CREATE TABLE owned (x integer)",
            "UPDATE ledger_wallet SET balance_minor = balance_minor + 1",
            "INSERT INTO ledger_entry (id) VALUES (gen_random_uuid())",
            "CREATE PUBLICATION owned FOR TABLE ledger_wallet",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_the_cdc_streams_and_answers_operators_as_that_login(cdc: CdcProcess, cdc_login: str) -> None:
    # migrate_shards makes the deployment's publication as the tables' owner; this store's own the same way.
    for alias in settings.SHARD_MAP.aliases:
        ensure_publication(settings.SHARD_MAP.shards[alias], cdc.publication, captured_tables(settings.AUDIT_TABLES))
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1_000, shard="shard_00")
    transfer(owner, payer, make_wallet(owner, shard="shard_01").id, 250)

    cdc.start(env={**FAST, "SHARDWALLET_DB_USER": cdc_login})
    client = cdc.client()
    wait_until(lambda: caught_up(client), 30, "the snapshot, read by the CDC's login")
    transfer(owner, payer, make_wallet(owner, shard="shard_01").id, 100)
    wait_until(lambda: caught_up(client), 30, "the stream, read by the CDC's login")

    # It keeps its slot registry: the slot's owner and its heartbeats.
    def heartbeats() -> list[tuple]:
        return raw_query(
            "shard_00", "SELECT cardinality(heartbeat_lsns) FROM shardwallet_cdc_slot WHERE slot_name = %s", [cdc.slot]
        )

    wait_until(lambda: heartbeats() and heartbeats()[0][0] > 0, 20, "a heartbeat recorded by the CDC's login")

    # A slot lost while it was stopped: the login answers the operator's re-snapshot with a new slot.
    cdc.stop()
    assert drop_slot(settings.SHARD_MAP.shards["shard_00"], cdc.slot)
    cdc.start(env={**FAST, "SHARDWALLET_DB_USER": cdc_login}, wait=False)
    wait_stopped(cdc, "shard_00", "slot_missing")
    out = StringIO()
    call_command("cdc_resnapshot", "shard_00", "--reason", "as the cdc login", "--wait", "60", stdout=out)
    assert "resnapshot of shard_00 done" in out.getvalue()
    cdc.wait_connected()
    wait_until(lambda: caught_up(client), 30, "the re-snapshot")
    streaming_as = raw_query(
        "shard_00",
        "SELECT r.usename FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid"
        " WHERE s.slot_name = %s",
        [cdc.slot],
    )
    assert streaming_as == [(cdc_login,)]
