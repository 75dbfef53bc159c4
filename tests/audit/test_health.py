"""/health shows the audit stream only where one is expected, and never fails the API for it."""

import time
from pathlib import Path

import pytest
from django.test import Client

from apps.audit.status import StatusBoard
from tests.factories import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def test_health_leaves_the_audit_stream_out_unless_one_is_expected(settings, tmp_path: Path) -> None:
    settings.AUDIT_DIR = tmp_path
    settings.AUDIT_CDC_EXPECTED = False
    response = Client().get("/health")
    assert response.status_code == 200
    assert "audit_cdc" not in response.json()["components"]


def test_an_expected_but_absent_stream_is_reported_without_failing_the_api(settings, tmp_path: Path) -> None:
    settings.AUDIT_DIR = tmp_path
    settings.AUDIT_CDC_EXPECTED = True
    response = Client().get("/health")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "ok"
    assert body["components"]["audit_cdc"]["ok"] is False
    assert "run_cdc" in body["components"]["audit_cdc"]["error"]


def test_a_running_stream_reports_its_lag_per_shard(settings, tmp_path: Path) -> None:
    settings.AUDIT_DIR = tmp_path
    settings.AUDIT_CDC_EXPECTED = True
    board = StatusBoard(["shard_00", "shard_01"], "chdb", 27999)
    board.update("shard_00", connected=True, disconnected_since=None, server_wal_lsn=5_000, confirmed_lsn=4_000)
    board.update("shard_01", connected=False, last_error="OperationalError: connection refused")
    board.write()
    component = Client().get("/health").json()["components"]["audit_cdc"]
    assert component["ok"] is False
    assert component["shards"]["shard_00"] == {
        "connected": True, "lag_bytes": 1_000, "lag_seconds": 0.0, "stopped": None, "slot_wal_status": None,
        "slot_retained_bytes": None,
    }  # fmt: skip
    assert component["shards"]["shard_01"]["connected"] is False
    assert "shard_01 not connected" in component["error"]

    board.update("shard_01", connected=True, disconnected_since=None)
    board.write()
    assert Client().get("/health").json()["components"]["audit_cdc"]["ok"] is True


def test_a_stopped_stream_and_a_slot_holding_too_much_wal_degrade_the_component(settings, tmp_path: Path) -> None:
    settings.AUDIT_DIR = tmp_path
    settings.AUDIT_CDC_EXPECTED = True
    settings.AUDIT_MAX_RETAINED_BYTES = 1_000_000
    board = StatusBoard(["shard_00", "shard_01"], "chdb", 27999)
    for alias in board.shards:
        board.update(alias, connected=True, disconnected_since=None)
    board.write()
    assert Client().get("/health").json()["components"]["audit_cdc"]["ok"] is True

    board.update("shard_00", connected=False, stopped="slot_lost", stopped_detail="slot x on shard_00 was invalidated")
    board.update("shard_01", slot="x", slot_wal_status="extended", slot_retained_bytes=2_000_000)
    board.write()
    component = Client().get("/health").json()["components"]["audit_cdc"]
    assert component["ok"] is False
    assert "shard_00 stream STOPPED (slot_lost): slot x on shard_00 was invalidated" in component["error"]
    assert "shard_01 slot holds 2000000 bytes of WAL" in component["error"]
    assert component["shards"]["shard_00"]["stopped"] == "slot_lost"

    board.update("shard_01", slot_wal_status="unreserved", slot_retained_bytes=10)
    board.write()
    assert "shard_01 slot x is unreserved" in Client().get("/health").json()["components"]["audit_cdc"]["error"]


def test_unconfirmed_heartbeats_show_as_lag_in_seconds(settings, tmp_path: Path) -> None:
    """A stream that stalls without a byte in flight still shows its lag: heartbeats go unconfirmed."""
    settings.AUDIT_DIR = tmp_path
    settings.AUDIT_HEARTBEAT_SECONDS = 5
    board = StatusBoard(["shard_00"], "chdb", 27999)
    now = time.time()
    board.update("shard_00", connected=True, disconnected_since=None, heartbeat_emitted_at=now,
                 heartbeat_confirmed_at=now)  # fmt: skip
    assert board.snapshot()["shards"]["shard_00"]["lag_seconds"] == 0.0
    board.update("shard_00", heartbeat_emitted_at=now, heartbeat_confirmed_at=now - 60)
    assert 54 <= board.snapshot()["shards"]["shard_00"]["lag_seconds"] <= 56
