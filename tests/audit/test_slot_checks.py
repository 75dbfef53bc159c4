"""What a reader checks of its slot when it starts: a slot someone advanced, or dropped and made
again, while the CDC was down, and a shard whose history no longer holds the store's position (a
failover to a standby that was behind), stop that shard's stream loudly, as a lost slot does.
Real shards, `run_cdc`, chDB."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from apps.audit.pgoutput import str_to_lsn
from apps.audit.reader import _timeline_switch, conninfo, drop_slot
from tests.audit.cdc import CdcProcess, wait_until
from tests.audit.helpers import caught_up
from tests.audit.store_edit import write_store
from tests.audit.test_stream_stops import FAST, server, wait_stopped
from tests.factories import ALL_DATABASES, make_client, make_wallet, raw_query

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]


def started_and_stopped(cdc: CdcProcess, shard: str) -> None:
    """The CDC has caught up with a wallet on `shard` and was stopped cleanly."""
    owner, _ = make_client()
    make_wallet(owner, funded=100, shard=shard)
    cdc.start(env=FAST)
    wait_until(lambda: caught_up(cdc.client()), 20, "the first changes")
    cdc.stop()


def record_position(
    cdc: CdcProcess, shard: str, *, confirmed: str, version: str, timeline: str = "timeline", wait: bool = True
) -> None:
    """The store records a new position of `shard` (its reader restarted): `confirmed`, `version`
    and `timeline` are ClickHouse expressions over the position it holds."""
    write_store(
        cdc,
        f"INSERT INTO audit.stream_positions SELECT shard, slot_name, {confirmed}, stream_epoch, tables, {timeline},"  # noqa: S608
        f" generation, {version}, now64(6) FROM audit.stream_positions FINAL WHERE shard = '{shard}'",
        env=FAST,
        wait=wait,
    )


def assert_stopped_everywhere(cdc: CdcProcess, settings: Any, shard: str, cause: str) -> None:
    settings.AUDIT_DIR = cdc.dir
    with pytest.raises(CommandError, match=f"{shard} stream STOPPED \\({cause}\\)"):
        call_command("cdc_status", stdout=StringIO())
    metrics = Client().get("/metrics").content.decode()
    assert f'shardwallet_cdc_stream_stopped{{cause="{cause}",shard="{shard}"}} 1.0' in metrics
    assert f"STOPPED the stream of {shard} ({cause})" in cdc.log_text()


def test_a_slot_advanced_while_the_reader_was_down_stops_the_stream(cdc: CdcProcess, settings: Any) -> None:
    started_and_stopped(cdc, "shard_00")
    owner, _ = make_client()
    make_wallet(owner, funded=40, shard="shard_00")  # changes the store will never see
    raw_query("shard_00", "SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", [cdc.slot])

    cdc.start(env=FAST, wait=False)
    status = wait_stopped(cdc, "shard_00", "slot_moved")
    assert "someone advanced it, or dropped and made it again" in status["stopped_detail"]
    cdc.wait_connected(["shard_01"])  # the other shard goes on
    assert_stopped_everywhere(cdc, settings, "shard_00", "slot_moved")


def test_a_slot_dropped_and_made_again_while_the_reader_was_down_stops_the_stream(
    cdc: CdcProcess, settings: Any
) -> None:
    started_and_stopped(cdc, "shard_01")
    owner, _ = make_client()
    make_wallet(owner, funded=40, shard="shard_01")
    assert drop_slot(server("shard_01"), cdc.slot)
    raw_query("shard_01", "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [cdc.slot])

    cdc.start(env=FAST, wait=False)
    wait_stopped(cdc, "shard_01", "slot_moved")
    cdc.wait_connected(["shard_00"])
    assert_stopped_everywhere(cdc, settings, "shard_01", "slot_moved")
    # The way out is the one for any slot gap: a new slot and snapshot, the gap recorded.
    call_command("cdc_resnapshot", "shard_01", "--reason", "slot remade in a test", "--wait", "60", stdout=StringIO())
    cdc.wait_connected()
    wait_until(lambda: caught_up(cdc.client()), 20, "the re-snapshot")


def test_a_slot_past_its_release_but_not_past_the_stores_position_streams_on(cdc: CdcProcess) -> None:
    """What a promoted standby's copy of the permanent slot can be: past where the old
    primary's reader was noted to let go of it, never past what the store holds. Nothing the
    store lacks was skipped, so no stop."""
    started_and_stopped(cdc, "shard_01")
    # WAL the store needs nothing of (a message pgoutput does not publish), then the slot
    # and the store's position both at its end.
    raw_query("shard_01", "SELECT pg_logical_emit_message(false, 'shardwallet-test', 'x')")
    end = raw_query("shard_01", "SELECT pg_current_wal_lsn()::text")[0][0]
    raw_query("shard_01", "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", [cdc.slot, end])
    record_position(cdc, "shard_01", confirmed=str(str_to_lsn(end)), version="version + 1")
    owner, _ = make_client()
    make_wallet(owner, funded=70, shard="shard_01")
    wait_until(lambda: caught_up(cdc.client()), 20, "changes after the restart")
    assert "STOPPED" not in cdc.log_text()


def test_a_shard_whose_history_lacks_the_stores_position_stops_the_stream(cdc: CdcProcess, settings: Any) -> None:
    started_and_stopped(cdc, "shard_00")
    # What a store records while following a primary on timeline 7 that then fails over to a
    # standby that was behind: the shard's history (timeline 1 here) never reached that position.
    record_position(
        cdc, "shard_00", confirmed="confirmed_lsn + 1000000", version="version + 1000000", timeline="7", wait=False
    )
    status = wait_stopped(cdc, "shard_00", "slot_behind")
    assert "is on timeline 1, whose history never shares timeline 7" in status["stopped_detail"]
    cdc.wait_connected(["shard_01"])
    assert_stopped_everywhere(cdc, settings, "shard_00", "slot_behind")


def test_a_slot_behind_the_store_on_the_same_timeline_streams_on(cdc: CdcProcess) -> None:
    """What a crash of the shard leaves (a slot's position is saved at checkpoints): the slot
    sends again what the store holds, which collapses; no stop."""
    started_and_stopped(cdc, "shard_01")
    record_position(cdc, "shard_01", confirmed="confirmed_lsn + 64", version="version + 64")
    owner, _ = make_client()
    make_wallet(owner, funded=70, shard="shard_01")
    wait_until(lambda: caught_up(cdc.client()), 20, "changes after the restart")
    assert "STOPPED" not in cdc.log_text()


def test_the_timeline_history_says_where_the_shards_history_left_an_earlier_timeline() -> None:
    """`TIMELINE_HISTORY` on a replication connection, as a promoted standby answers it (its
    history file is written here by hand: no standby is promoted on the test stack)."""
    [(data_dir,)] = raw_query("shard_00", "SHOW data_directory")
    history = Path(data_dir) / "pg_wal" / "00000009.history"
    history.write_text("1\t0/3000000\tno recovery target specified\n4\t0/5A00000\tafter a failover\n")
    conn = psycopg2.connect(
        conninfo(server("shard_00")), connection_factory=psycopg2.extras.LogicalReplicationConnection
    )
    try:
        cur = conn.cursor()
        assert _timeline_switch(cur, 9, 4) == str_to_lsn("0/5A00000")
        assert _timeline_switch(cur, 9, 1) == str_to_lsn("0/3000000")
        assert _timeline_switch(cur, 9, 2) is None  # never on its history
        assert _timeline_switch(cur, 9, 12) is None  # a later timeline than the shard's
    finally:
        conn.close()
        history.unlink()
