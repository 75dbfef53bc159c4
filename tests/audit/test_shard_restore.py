"""One shard restored from its pgBackRest backup to a point in time, while the other shards and
the audit stream run on; what check_ledger, reconcile and the stream then say; and the recovery
of what came after: `cdc_resnapshot` keeps the changes the shard lost, `shard_replay` applies
them again.

The restored shard is a server of its own (a restore replaces its data directory), archived by
pgBackRest, added to the map and given a bucket as `shard_add` and a move do. Real PostgreSQL,
pgBackRest, `run_cdc` and chDB.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from apps.audit.reader import conninfo, drop_slot
from apps.audit.reconcile import reconcile
from apps.ledger.services import wallet_fund
from apps.sharding.devstack import PostgresCluster
from apps.sharding.mapstore import live_map, register_connections, save_server
from apps.sharding.pgbackrest import BackupRepository
from apps.sharding.routing import alias_for_id, refresh_shard_map, shard_map
from apps.sharding.shard_setup import seed_shard
from apps.sharding.shardmap import DatabaseServer
from apps.transfers.api.views import render_transfer
from apps.transfers.checks import check_ledger
from apps.transfers.creation import transfer_create
from apps.transfers.saga import transfer_advance
from tests.audit.cdc import CdcProcess, wait_until
from tests.audit.moves import control_epoch, move_bucket, restore_buckets
from tests.audit.test_reconcile import query_rows
from tests.audit.test_stream_stops import FAST, wait_stopped
from tests.factories import (
    ALL_DATABASES,
    create_transfer,
    free_port,
    make_client,
    make_wallet,
    raw_query,
    transfer_request,
)

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

RESTORED = "shard_02"
BUCKET = 305  # a bucket of shard_00 in the test map that no other test uses


@dataclasses.dataclass
class Restorable:
    server: DatabaseServer
    cluster: PostgresCluster
    backups: BackupRepository

    def restore_point(self) -> str:
        """The server's time now, as a restore target: what commits after it, a restore takes away."""
        with psycopg.connect(conninfo(self.server), autocommit=True) as conn:
            target = str(conn.execute("SELECT clock_timestamp()::text").fetchone()[0])  # type: ignore[index]
        time.sleep(1.1)  # pgBackRest's time targets are whole seconds
        return target

    def restore(self, client: Any, target: str) -> None:
        """Once the audit store holds every change and the WAL is archived: back to `target`."""
        wait_until(
            lambda: stored_entries(client, RESTORED) == entries_of(RESTORED), 30, "the store to hold every change"
        )
        self.backups.archive_now()
        self.backups.restore_to(target)
        connections[RESTORED].close()


@pytest.fixture(scope="module")
def restorable(django_db_setup: None) -> Iterator[Restorable]:
    """A server of its own whose WAL pgBackRest archives, known to this test process (not yet in the map)."""
    port = free_port()
    root = Path(settings.DEVSTACK_DIR) / f"restore-{port}"
    server = DatabaseServer(RESTORED, "127.0.0.1", port, "shardwallet")
    cluster = PostgresCluster(server, root / "data")
    backups = BackupRepository(root / "backup", cluster)
    backups.directory.mkdir(parents=True)
    backups.write_config()
    cluster.extra_conf = backups.server_conf()
    cluster.initialise()
    cluster.start()
    try:
        cluster.ensure_database()
        backups.create_stanza()
        register_connections(dataclasses.replace(settings.SHARD_MAP, shards={RESTORED: server}))
        yield Restorable(server, cluster, backups)
    finally:
        if RESTORED in connections.settings:
            connections[RESTORED].close()
            del connections[RESTORED]
            del connections.settings[RESTORED]
        settings.DATABASES.pop(RESTORED, None)
        if cluster.is_running():
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def joined(cdc: CdcProcess, restorable: Restorable) -> Iterator[Restorable]:
    """The server as a shard of the map with one bucket, its database new; afterwards out of the map,
    the bucket back on shard_00."""
    connections[RESTORED].close()
    admin = f"host=127.0.0.1 port={restorable.server.port} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{restorable.server.name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{restorable.server.name}"')
    save_server(restorable.server)
    raw_query("default", "UPDATE sharding_map_state SET epoch = %s WHERE id = 1", [control_epoch() + 1])
    refresh_shard_map()
    call_command("migrate", database=RESTORED, interactive=False, verbosity=0)
    seed_shard(RESTORED, shard_map())
    move_bucket("shard_00", RESTORED, BUCKET)
    yield restorable
    cdc.stop()
    connections[RESTORED].close()
    drop_slot(restorable.server, cdc.slot)
    restore_buckets([BUCKET])
    raw_query("default", "DELETE FROM sharding_server WHERE alias = %s", [RESTORED])
    raw_query("default", "UPDATE sharding_map_state SET epoch = %s WHERE id = 1", [control_epoch() + 1])
    live_map.forget()
    refresh_shard_map()


def pay(owner: Any, payer: Any, payee: Any, amount: int, key: str = "") -> uuid.UUID:
    transfer = transfer_advance(create_transfer(owner, payer, payee.id, amount, key=key).id)
    assert transfer.status == "completed", transfer.status
    return transfer.id


def balances(*wallets: Any) -> dict[uuid.UUID, int | None]:
    out: dict[uuid.UUID, int | None] = {}
    for wallet in wallets:
        alias = alias_for_id(wallet.id)
        rows = raw_query(alias, "SELECT balance_minor FROM ledger_wallet WHERE id = %s", [wallet.id])
        out[wallet.id] = rows[0][0] if rows else None
    return out


def store_balance(client: Any, wallet_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return client.query(
        "SELECT balance_minor FROM audit.wallets FINAL WHERE wallet_id = {id:UUID} AND is_deleted = 0",
        parameters={"id": str(wallet_id)},
    ).result_rows


def entries_of(alias: str) -> set[tuple[Any, ...]]:
    return set(raw_query(alias, "SELECT id, wallet_id, seq, amount_minor, balance_after_minor FROM ledger_entry"))


def stored_entries(client: Any, alias: str) -> set[tuple[Any, ...]]:
    return set(
        client.query(
            "SELECT entry_id, wallet_id, entry_seq, amount_minor, balance_after_minor FROM audit.ledger_entries FINAL"
            " WHERE is_deleted = 0 AND shard = {shard:String}",
            parameters={"shard": alias},
        ).result_rows
    )


def run(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


def test_a_shard_restored_to_a_point_in_time_is_caught_by_the_checks_and_its_lost_changes_replayed(
    cdc: CdcProcess, joined: Restorable, settings: Any
) -> None:
    settings.AUDIT_DIR = cdc.dir
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1_000, shard=RESTORED)
    payee = make_wallet(owner, shard=RESTORED)
    other = make_wallet(owner, funded=1_000, shard="shard_00")
    cdc.start(env=FAST)
    cdc.wait_connected([RESTORED])
    client = cdc.client()
    joined.backups.full_backup()

    # Before the restore point: one transfer on the shard, one out of it, one into it.
    kept = [pay(owner, payer, payee, 100), pay(owner, payer, other, 50), pay(owner, other, payer, 30)]
    target = joined.restore_point()
    # After it, the same again, a deposit and a new wallet: what the restore takes away.
    lost = [pay(owner, payer, payee, 7, "lost-a"), pay(owner, payer, other, 11, "lost-b"), pay(owner, other, payer, 13)]
    deposit_key = f"lost-{uuid.uuid4()}"
    wallet_fund(wallet_id=payee.id, amount_minor=40, reference=deposit_key)
    late = make_wallet(owner, funded=5, shard=RESTORED)
    before = balances(payer, payee, other, late)
    assert before == {payer.id: 875, payee.id: 147, other.id: 1_018, late.id: 5}
    assert check_ledger().ok
    joined.restore(client, target)

    # The shard is back where it was at the target: the transfers after it are gone from it.
    assert balances(payer, payee, other, late) == {payer.id: 880, payee.id: 100, other.id: 1_018, late.id: None}
    shard_transfers = {row[0] for row in raw_query(RESTORED, "SELECT id FROM transfers_transfer")}
    assert set(kept[:2]) <= shard_transfers
    assert not shard_transfers & {lost[0], lost[1]}
    # check_ledger: shard_00 holds a credit whose transfer the shard lost, and a transfer it paid
    # whose credit the shard lost; per currency, the balances no longer add up.
    report = check_ledger()
    assert not report.ok
    named = "\n".join(report.violations)
    assert str(lost[1]) in named, named
    assert str(lost[2]) in named, named
    # The stream stops loudly: the shard's history no longer holds what the store has.
    status = wait_stopped(cdc, RESTORED, "slot_behind")
    assert "restored to an earlier point in time" in status["stopped_detail"]
    assert store_balance(client, payer.id) == [(875,)]  # the store still holds what came after

    # Recovery, step 1: a new slot and snapshot; the changes after the branch are set aside.
    result = run("cdc_resnapshot", RESTORED, "--reason", "restored to a point in time in a test", "--wait", "60")
    assert "audit.abandoned_changes" in result, result
    cdc.wait_connected([RESTORED])
    abandoned = client.query(
        "SELECT table_name, op, count() FROM audit.abandoned_changes FINAL WHERE shard = {s:String}"
        " GROUP BY table_name, op",
        parameters={"s": RESTORED},
    ).result_rows
    assert ("transfers_transfer", "insert", 2) in abandoned, abandoned
    assert ("ledger_wallet", "insert", 1) in abandoned, abandoned
    # The store now shows the shard as it is, never its lost versions over the new history's.
    wait_until(lambda: store_balance(client, payer.id) == [(880,)], 30, "the store to show the restored balance")
    assert store_balance(client, late.id) == []
    assert not reconcile(client, wait=10).ok  # the cross-shard halves still disagree

    # Step 2: the lost changes applied again, in commit order.
    summary = run("shard_replay", RESTORED, "--reason", "after the restore in a test", "--port", str(cdc.port))
    assert "0 rows were already so" in summary, summary
    assert balances(payer, payee, other, late) == before
    ledger = check_ledger()
    assert ledger.ok, ledger.violations
    wait_until(lambda: stored_entries(client, RESTORED) == entries_of(RESTORED), 30, "the replayed changes streamed")
    wait_until(lambda: store_balance(client, payer.id) == [(875,)], 30, "the replayed balance in the store")
    report = reconcile(client, wait=10)
    assert report.ok, report.differences

    # The lost requests' keys came back with them: a client retrying gets the transfer it had.
    for (payee_id, amount, key), transfer_id in zip(
        [(payee.id, 7, "lost-a"), (other.id, 11, "lost-b")], lost, strict=False
    ):
        retried = transfer_create(transfer_request(owner, payer, payee_id, amount, key=key), render=render_transfer)
        assert retried.outcome == "replayed", retried
        assert json.loads(retried.body or "{}")["id"] == str(transfer_id)
    wallet_fund(wallet_id=payee.id, amount_minor=40, reference=deposit_key)
    assert balances(payer, payee, other, late) == before

    # A repeat changes nothing; the shard goes on (its serial ids past the replayed ones).
    again = run("shard_replay", RESTORED, "--reason", "again", "--port", str(cdc.port))
    assert "applied: nothing" in again, again
    pay(owner, payer, payee, 1)
    assert balances(payer, payee) == {payer.id: 874, payee.id: 148}


def test_a_replay_stops_at_a_row_the_shard_changed_since_and_can_leave_that_transaction_out(
    cdc: CdcProcess, joined: Restorable, settings: Any
) -> None:
    """A conflict: the restored shard took a change to a row the lost history also changed."""
    settings.AUDIT_DIR = cdc.dir
    owner, _ = make_client()
    payer = make_wallet(owner, funded=500, shard=RESTORED)
    payee = make_wallet(owner, shard=RESTORED)
    bystander = make_wallet(owner, shard=RESTORED)
    cdc.start(env=FAST)
    cdc.wait_connected([RESTORED])
    client = cdc.client()
    joined.backups.full_backup()
    target = joined.restore_point()
    pay(owner, payer, payee, 25)
    wallet_fund(wallet_id=bystander.id, amount_minor=9, reference=f"lost-{uuid.uuid4()}")
    joined.restore(client, target)
    wait_stopped(cdc, RESTORED, "slot_behind")
    run("cdc_resnapshot", RESTORED, "--reason", "restored in a test", "--wait", "60")
    wallet_fund(wallet_id=payer.id, amount_minor=3, reference=f"new-{uuid.uuid4()}")  # before the replay: a conflict

    with pytest.raises(CommandError, match="conflict at ledger_") as refused:
        run("shard_replay", RESTORED, "--reason", "conflict in a test", "--port", str(cdc.port))
    assert "0 transactions of generation 0" in str(refused.value)
    assert balances(payer, payee) == {payer.id: 503, payee.id: 0}  # the conflicting transaction rolled back

    # The auditors' list of what was lost; the operator leaves the transfer out, the deposit (to a
    # wallet the transfer did not touch) goes in.
    lost = query_rows(cdc, "lost_transactions", f"shard={RESTORED}")
    assert len(lost) == 2, lost
    assert "transfers_transfer insert" in lost[0]["changes"], lost
    summary = run("shard_replay", RESTORED, "--reason", "without the transfer", "--port", str(cdc.port),
                  "--skip", lost[0]["commit_lsn"])  # fmt: skip
    assert f"left out: {lost[0]['commit_lsn']}" in summary, summary
    assert balances(payer, payee, bystander) == {payer.id: 503, payee.id: 0, bystander.id: 9}
