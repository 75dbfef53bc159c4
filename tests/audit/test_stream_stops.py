"""The audit stream never goes on over a hole: a lost, dropped, foreign or skipped-ahead slot, a
column that drifted or a change it cannot decode stop that shard's stream loudly (the others go on),
and the operator's commands record what the store will never hold. Real shards, `run_cdc`, chDB."""

from __future__ import annotations

import shutil
import uuid
from io import StringIO
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from apps.audit.reader import conninfo, drop_slot
from apps.ledger.services import wallet_fund
from tests.audit.cdc import CdcProcess, wait_until
from tests.audit.helpers import caught_up, count
from tests.audit.test_cdc import transfer
from tests.factories import ALL_DATABASES, make_client, make_wallet, raw_query

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

FAST = {"SHARDWALLET_AUDIT_HEARTBEAT_SECONDS": "0.5", "SHARDWALLET_AUDIT_STOPPED_RETRY_SECONDS": "2"}


def server(alias: str) -> Any:
    return settings.SHARD_MAP.shards[alias]


def shard_status(cdc: CdcProcess, alias: str) -> dict[str, Any]:
    return ((cdc.status() or {}).get("shards") or {}).get(alias) or {}


def wait_stopped(cdc: CdcProcess, alias: str, cause: str) -> dict[str, Any]:
    def stopped() -> dict[str, Any] | None:
        status = shard_status(cdc, alias)
        return status if status.get("stopped") == cause else None

    try:
        return wait_until(stopped, 40, f"{alias}'s stream to stop ({cause})")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; status {shard_status(cdc, alias)}; log:\n{cdc.log_text()[-2000:]}") from None


def gaps(client: Any) -> list[tuple[Any, ...]]:
    return client.query(
        "SELECT shard, cause, resolution, detail, requested_by, from_lsn < to_lsn FROM audit.cdc_gaps FINAL"
        " ORDER BY recorded_at"
    ).result_rows


def test_a_slot_dropped_while_the_reader_is_down_stops_it_until_an_operator_resnapshots(
    cdc: CdcProcess, settings: Any
) -> None:
    owner, _ = make_client()
    make_wallet(owner, funded=500, shard="shard_00")
    gone = make_wallet(owner, funded=700, shard="shard_00")
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "the first changes")
    cdc.stop()
    assert drop_slot(server("shard_00"), cdc.slot)
    # While nobody reads: a wallet disappears (its rows deleted behind the CDC's back) and one is added.
    raw_query("shard_00", "DELETE FROM ledger_entry WHERE wallet_id = %s", [gone.id])
    raw_query("shard_00", "DELETE FROM ledger_wallet WHERE id = %s", [gone.id])
    make_wallet(owner, funded=300, shard="shard_00")

    cdc.start(env=FAST, wait=False)
    status = wait_stopped(cdc, "shard_00", "slot_missing")
    assert f"slot {cdc.slot} is missing on shard_00" in status["stopped_detail"]
    assert "STOPPED the stream of shard_00 (slot_missing)" in cdc.log_text()
    cdc.wait_connected(["shard_01"])  # the other shard goes on
    settings.AUDIT_DIR = cdc.dir
    with pytest.raises(CommandError, match="shard_00 stream STOPPED \\(slot_missing\\)"):
        call_command("cdc_status", stdout=StringIO())
    metrics = Client().get("/metrics").content.decode()
    assert 'shardwallet_cdc_stream_stopped{cause="slot_missing",shard="shard_00"} 1.0' in metrics

    with pytest.raises(CommandError, match="only cdc_resnapshot resolves"):  # skipping cannot fill a slot gap
        call_command("cdc_skip", "shard_00", "0/1", "--reason", "wrong tool", "--wait", "30", stdout=StringIO())
    out = StringIO()
    call_command(
        "cdc_resnapshot", "shard_00", "--reason", "slot dropped in a test", "--by", "tester", "--wait", "60", stdout=out
    )
    assert "gap recorded" in out.getvalue()
    cdc.wait_connected()
    wait_until(lambda: caught_up(client), 20, "the re-snapshot")  # the vanished wallet's entry is deleted in the store
    live = "SELECT count() FROM audit.wallets FINAL WHERE wallet_id = {id:UUID} AND is_deleted = 0"
    assert count(client, live, {"id": str(gone.id)}) == 0
    assert gaps(client) == [("shard_00", "slot_missing", "resnapshot", "slot dropped in a test", "tester", 1)]
    wallet_fund(wallet_id=make_wallet(owner, shard="shard_00").id, amount_minor=1, reference="after")
    wait_until(lambda: caught_up(client), 20, "changes after the re-snapshot")


def test_a_slot_lost_past_max_slot_wal_keep_size_is_reported_and_stops_the_stream(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    make_wallet(owner, funded=100, shard="shard_01")
    cdc.start(env=FAST)
    wait_until(lambda: caught_up(cdc.client()), 20, "the first changes")
    # WAL held by the slot is reported while the reader runs.
    wait_until(lambda: isinstance(shard_status(cdc, "shard_01").get("slot_retained_bytes"), int), 10, "slot figures")
    assert shard_status(cdc, "shard_01")["slot_wal_status"] == "reserved"
    cdc.stop()
    with psycopg.connect(conninfo(server("shard_01")), autocommit=True) as conn:
        try:
            conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'")
            conn.execute("SELECT pg_reload_conf()")
            for _ in range(6):  # more WAL than the cap while nobody reads
                conn.execute("SELECT pg_logical_emit_message(true, 'test', repeat('x', 100))")
                conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            status = conn.execute(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", [cdc.slot]
            ).fetchone()
            assert status == ("lost",)
        finally:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")
    cdc.start(env=FAST, wait=False)
    status = wait_stopped(cdc, "shard_01", "slot_lost")
    assert "invalidated" in status["stopped_detail"]
    wait_until(lambda: shard_status(cdc, "shard_01").get("slot_wal_status") == "lost", 10, "the slot's status")
    cdc.wait_connected(["shard_00"])


def test_a_second_store_refuses_a_slot_its_copy_read_on_and_a_slot_another_store_owns(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    wallet = make_wallet(owner, funded=100, shard="shard_00")
    cdc.start(env=FAST)
    wait_until(lambda: caught_up(cdc.client()), 20, "the first changes")
    cdc.stop()
    copy = CdcProcess()  # the same store (a backup, a staging copy): same id, so the same slot name
    try:
        copy.slot_prefix = cdc.slot_prefix
        shutil.rmtree(copy.dir)
        shutil.copytree(cdc.dir, copy.dir, symlinks=True)  # the engine's links are relative
        (copy.dir / "cdc_status.json").unlink()
        cdc.start(env=FAST)  # the original reads on, past heartbeats the copy never sees
        wallet_fund(wallet_id=wallet.id, amount_minor=5, reference="only-in-the-original")
        wait_until(lambda: caught_up(cdc.client()), 20, "the original's changes")
        beats = shard_status(cdc, "shard_00").get("heartbeat_confirmed_at") or 0
        wait_until(lambda: (shard_status(cdc, "shard_00").get("heartbeat_confirmed_at") or 0) > beats + 1, 10, "beats")
        cdc.stop()
        copy.start(env=FAST, wait=False)
        status = wait_stopped(copy, "shard_00", "slot_ahead")
        assert "past a heartbeat" in status["stopped_detail"]
        copy.stop()
    finally:
        copy.cleanup_files()
    # A slot the shard says another store created is not read at all.
    raw_query(
        "shard_01", "UPDATE shardwallet_cdc_slot SET store_id = %s WHERE slot_name = %s", [uuid.uuid4(), cdc.slot]
    )
    cdc.start(env=FAST, wait=False)
    status = wait_stopped(cdc, "shard_01", "foreign_slot")
    assert f"slot {cdc.slot} on shard_01 was created by audit store" in status["stopped_detail"]
    with pytest.raises(CommandError, match="belongs to another audit store"):  # never re-snapshot over it
        call_command("cdc_resnapshot", "shard_01", "--reason", "test", "--wait", "30", stdout=StringIO())


def test_a_renamed_column_stops_that_shards_stream_and_the_others_go_on(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    drifting = make_wallet(owner, funded=100, shard="shard_01")
    steady = make_wallet(owner, shard="shard_00")
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "the first changes")
    touch = "UPDATE ledger_wallet SET updated_at = now() WHERE id = %s"
    try:
        raw_query("shard_01", "ALTER TABLE ledger_wallet RENAME COLUMN status TO state")
        raw_query("shard_01", touch, [drifting.id])
        status = wait_stopped(cdc, "shard_01", "schema_drift")
        assert "table ledger_wallet has no column status" in status["stopped_detail"]
        assert "schema drift on shard_01: table ledger_wallet has no column status" in cdc.log_text()
        wallet_fund(wallet_id=steady.id, amount_minor=42, reference="meanwhile")  # shard_00 goes on
        wait_until(lambda: caught_up(client), 20, "shard_00's deposit while shard_01 is stopped")
    finally:
        raw_query("shard_01", "ALTER TABLE ledger_wallet RENAME COLUMN state TO status")
    # The drifted transaction stays in the WAL: the operator leaves it out, and it is recorded as a gap.
    out = StringIO()
    call_command("cdc_skip", "shard_01", status["stopped_commit_lsn"], "--reason", "column renamed by mistake",
                 "--wait", "30", stdout=out)  # fmt: skip
    assert "left out the transaction" in out.getvalue()
    cdc.wait_connected()
    wallet_fund(wallet_id=drifting.id, amount_minor=7, reference="after-the-fix")
    wait_until(lambda: caught_up(client), 20, "shard_01 after the skip")
    assert [g[:3] for g in gaps(client)] == [("shard_01", "schema_drift", "skip")]


def test_an_undecodable_change_is_shown_with_its_position_and_can_be_skipped(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    wallet = make_wallet(owner, funded=100, shard="shard_00")
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "the first changes")
    # A timestamp the store cannot hold: its insert would fail the whole batch over and over.
    raw_query("shard_00", "UPDATE ledger_wallet SET updated_at = '9999-12-31' WHERE id = %s", [wallet.id])
    status = wait_stopped(cdc, "shard_00", "undecodable")
    assert "outside what the audit store can hold" in status["stopped_detail"]
    assert f"in the transaction committed at {status['stopped_commit_lsn']}" in status["stopped_detail"]
    assert status["stopped_lsn"]
    with pytest.raises(CommandError, match="not in the transaction at 0/1"):
        call_command("cdc_skip", "shard_00", "0/1", "--reason", "wrong one", "--wait", "30", stdout=StringIO())
    call_command("cdc_skip", "shard_00", status["stopped_commit_lsn"], "--reason", "probe", "--wait", "30",
                 stdout=StringIO())  # fmt: skip
    cdc.wait_connected()
    wallet_fund(wallet_id=wallet.id, amount_minor=3, reference="after-the-skip")
    wait_until(lambda: caught_up(client), 20, "changes after the skip")
    assert [g[:3] for g in gaps(client)] == [("shard_00", "undecodable", "skip")]


def test_a_table_added_to_the_captured_set_is_backfilled(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1_000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    without = [t for t in settings.AUDIT_TABLES if t != "transfers_payee_credit"]
    cdc.start(env={**FAST, "SHARDWALLET_AUDIT_TABLES": ",".join(without)})
    client = cdc.client()
    done = transfer(owner, payer, payee.id, 250)
    wait_until(lambda: caught_up(client), 20, "the transfer's entries")
    credits = "SELECT count() FROM audit.payee_credits FINAL WHERE transfer_id = {id:UUID} AND outcome = 'credited'"
    assert count(client, credits, {"id": str(done.id)}) == 0
    cdc.stop()
    cdc.start(env=FAST)
    wait_until(lambda: count(client, credits, {"id": str(done.id)}) == 1, 20, "the backfilled payee credit")
    assert "cdc backfilled transfers_payee_credit on shard_01: 1 rows" in cdc.log_text()
    later = transfer(owner, payer, payee.id, 5)  # and its changes stream from now on
    wait_until(lambda: count(client, credits, {"id": str(later.id)}) == 1, 20, "a streamed payee credit")


def test_a_truncate_marks_the_tables_rows_deleted_in_the_store(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    wallet = make_wallet(owner, funded=100, shard="shard_00")
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "the first changes")
    raw_query("shard_00", "TRUNCATE ledger_entry, ledger_wallet CASCADE")
    wait_until(lambda: shard_status(cdc, "shard_00").get("truncations", 0) >= 2, 20, "the truncation")
    live = "SELECT count() FROM audit.ledger_entries FINAL WHERE wallet_id = {id:UUID} AND is_deleted = 0"
    assert count(client, live, {"id": str(wallet.id)}) == 0
    assert caught_up(client)
    assert "TRUNCATED on shard_00" in cdc.log_text()
