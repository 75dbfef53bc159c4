"""The operations page: stalled and parked transfers with their actions, the shard map, CDC."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.transfers.models import Transfer
from tests.factories import ALL_DATABASES, create_transfer, make_client
from tests.operators.helpers import cross_shard_pair, logged_in, make_staff, parked_transfer

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def test_lists_parked_and_stalled_transfers_with_age_attempts_and_last_error() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    parked = parked_transfer(owner, payer, payee.id, 100)
    stalled = create_transfer(owner, payer, payee.id, 200)  # debited; no worker takes its message
    Transfer.objects.using("shard_00").filter(id=stalled.id).update(
        updated_at=timezone.now() - timedelta(minutes=5), attempts=3, last_error="OperationalError: timeout"
    )
    fresh = create_transfer(owner, payer, payee.id, 300)  # in flight, but only just

    response = logged_in(make_staff("olga", "operators")).get("/admin/operations/?older_than=60")
    assert response.status_code == 200
    listed = [item["row"] for item in response.context["rows"]]
    assert [row.transfer.id for row in listed] == [stalled.id, parked.id]  # least recently touched first
    assert [row.parked for row in listed] == [False, True]
    assert all(row.shard == "shard_00" for row in listed)
    assert listed[0].idle >= timedelta(minutes=5)
    html = response.content.decode()
    assert str(fresh.id) not in html
    assert "OperationalError: timeout" in html
    assert "2.00 USD" in html  # amounts as an operator reads them, minor units beside
    assert "(200 minor units)" in html
    assert "connection refused (test)" in html  # the parked one's last error
    assert html.count(">Re-drive</a>") == 2
    assert html.count(">Force-compensate</a>") == 2
    back = "next=%2Fadmin%2Foperations%2F%3Folder_than%3D60"
    assert f"/admin/transfers/transfer/{parked.id}/compensate/?{back}" in html


def test_shows_the_shard_map_with_buckets_and_rows_and_says_no_cdc_is_running() -> None:
    owner, _ = make_client()
    cross_shard_pair(owner, funded=1000)  # a wallet on each shard, one deposit entry on shard_00
    response = logged_in(make_staff("vera", "viewers")).get("/admin/operations/")
    assert response.status_code == 200
    shards = {info.alias: info for info in response.context["shards"]}
    assert shards["shard_00"].bucket_ranges == [(0, 511)]
    assert shards["shard_01"].bucket_count == 512
    assert shards["shard_00"].rows == {"wallets": "1", "ledger entries": "1", "transfers": "0", "payee outcomes": "0"}
    assert shards["shard_01"].rows["wallets"] == "1"
    html = response.content.decode()
    assert "0-511" in html
    assert "CDC not running" in html


def test_large_tables_are_shown_by_estimate_without_counting_them(monkeypatch) -> None:
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    from apps.operators import selectors

    owner, _ = make_client()
    cross_shard_pair(owner, funded=1000)
    with connections["shard_00"].cursor() as cursor:
        cursor.execute("ANALYZE ledger_wallet")
        cursor.execute("ANALYZE ledger_entry")
    monkeypatch.setattr(selectors, "EXACT_COUNT_UP_TO", 0)
    with CaptureQueriesContext(connections["shard_00"]) as queries:
        response = logged_in(make_staff("vera", "viewers")).get("/admin/operations/")
    shards = {info.alias: info for info in response.context["shards"]}
    assert shards["shard_00"].rows["wallets"] == "~1"
    assert shards["shard_00"].rows["ledger entries"] == "~1"
    assert not [q["sql"] for q in queries.captured_queries if "count(*) FROM ledger_" in q["sql"]]


def test_a_viewer_sees_the_page_without_action_buttons() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    parked = parked_transfer(owner, payer, payee.id, 100)
    html = logged_in(make_staff("vera", "viewers")).get("/admin/operations/").content.decode()
    assert str(parked.id) in html
    assert "Re-drive</a>" not in html
    assert "Force-compensate</a>" not in html


def test_the_page_needs_a_staff_login_and_the_view_permission() -> None:
    assert Client().get("/admin/operations/").status_code == 302  # to the login page
    from django.contrib.auth.models import User

    nobody = User.objects.db_manager("default").create_user("nobody", password="x", is_staff=True)
    assert logged_in(nobody).get("/admin/operations/").status_code == 403


def test_durations_read_like_a_person_would_say_them() -> None:
    from apps.operators.selectors import duration_text

    assert duration_text(timedelta(seconds=7.9)) == "7 s"
    assert duration_text(timedelta(minutes=4, seconds=10)) == "4 min 10 s"
    assert duration_text(timedelta(hours=2)) == "2 h"
    assert duration_text(timedelta(days=3, hours=4, minutes=5)) == "3 d 4 h"


def test_a_stopped_audit_stream_and_the_wal_its_slot_holds_show_on_the_page(settings, tmp_path) -> None:
    from apps.audit.status import StatusBoard

    settings.AUDIT_DIR = tmp_path
    board = StatusBoard(["shard_00", "shard_01"], "chdb", None)
    board.update("shard_00", connected=True, disconnected_since=None, slot_retained_bytes=123_456,
                 slot_wal_status="reserved")  # fmt: skip
    board.update("shard_01", stopped="slot_lost", stopped_detail="slot x on shard_01 was invalidated",
                 slot_wal_status="lost")  # fmt: skip
    board.write()
    html = logged_in(make_staff("vera", "viewers")).get("/admin/operations/").content.decode()
    assert "<td>123456</td><td>reserved</td><td>streaming</td>" in html
    assert "<strong>STOPPED (slot_lost)</strong>: slot x on shard_01 was invalidated" in html
