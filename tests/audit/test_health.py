"""/health shows the audit stream only where one is expected, and never fails the API for it."""

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
    assert component["shards"]["shard_00"] == {"connected": True, "lag_bytes": 1_000, "lag_seconds": 0.0}
    assert component["shards"]["shard_01"]["connected"] is False
    assert "shard_01 not connected" in component["error"]

    board.update("shard_01", connected=True, disconnected_since=None)
    board.write()
    assert Client().get("/health").json()["components"]["audit_cdc"]["ok"] is True
