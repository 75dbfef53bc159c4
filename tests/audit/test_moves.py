"""The audit stream across bucket moves: real PostgreSQL shards, real `run_cdc` processes, real chDB.

The moves are made by hand (tests/audit/moves.py), step by step as the mover makes them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from psycopg import sql

from apps.audit.epochs import EPOCH_SHIFT
from apps.audit.reader import drop_slot
from apps.audit.reconcile import reconcile
from apps.ledger.services import wallet_create, wallet_fund, wallet_withdraw
from apps.sharding.placement import range_filter_sql
from apps.sharding.routing import shard_map
from tests.audit.cdc import CdcProcess, wait_until
from tests.audit.helpers import caught_up, count
from tests.audit.moves import (
    connect,
    control_epoch,
    copy_bucket,
    delete_bucket,
    fence,
    move_bucket,
    own,
    push_wal_past,
    restore_buckets,
    wal_lsn,
)
from tests.factories import ALL_DATABASES, make_client, make_wallet, raw_query

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

# Buckets of shard_00 in the test map that no other test uses.
MOVED, STRANDED, HANDED_OVER = 300, 301, 302


@pytest.fixture
def buckets() -> Iterator[list[int]]:
    """The buckets a test moves, put back on their shards afterwards."""
    moved = [MOVED, STRANDED, HANDED_OVER]
    yield moved
    restore_buckets(moved)


def wallet_rows(client: Any, wallet_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return client.query(
        "SELECT shard, balance_minor, commit_lsn, seq, version FROM audit.wallets FINAL"
        " WHERE wallet_id = {id:UUID} AND is_deleted = 0",
        parameters={"id": str(wallet_id)},
    ).result_rows


def balance_and_shard(client: Any, wallet_id: uuid.UUID) -> tuple[int, str] | None:
    rows = wallet_rows(client, wallet_id)
    return (rows[0][1], rows[0][0]) if rows else None


def streamed_from(client: Any, shard: str, wallet_id: uuid.UUID) -> int:
    """How many of the wallet's row changes `shard`'s stream wrote to the change log."""
    return count(
        client,
        "SELECT count() FROM audit.changes FINAL WHERE shard = {shard:String} AND table_name = 'ledger_wallet'"
        " AND JSONExtractString(coalesce(new_row, old_row), 'id') = {id:String}",
        {"shard": shard, "id": str(wallet_id)},
    )


def skipped_in_metrics(shard: str) -> float:
    metrics = Client().get("/metrics").content.decode()
    found = re.search(rf'^shardwallet_cdc_origin_transactions_skipped_total{{shard="{shard}"}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def confirmed_lsn(cdc: CdcProcess, alias: str) -> int:
    from apps.audit.pgoutput import str_to_lsn

    rows = raw_query(
        alias, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [cdc.slot]
    )
    return str_to_lsn(rows[0][0]) if rows and rows[0][0] else 0


def test_transactions_under_a_replication_origin_stay_out_of_the_store_and_are_confirmed(
    cdc: CdcProcess, buckets: list[int]
) -> None:
    owner, _ = make_client()
    copied = wallet_create(owner_id=owner.id, currency="USD", bucket=STRANDED)
    wallet_fund(wallet_id=copied.id, amount_minor=500, reference="on-the-source")
    cdc.start()
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "the first catch-up")
    metric_before = skipped_in_metrics("shard_01")

    # A move's copy arrives on shard_01 under the mover's origin (one transaction), and is
    # removed the same way (an aborted move's clean-up): no money appears or leaves.
    rows = copy_bucket("shard_00", "shard_01", STRANDED)
    assert (rows["ledger_wallet"], rows["ledger_entry"]) == (1, 1)
    delete_bucket("shard_01", STRANDED)
    after_origin = wal_lsn("shard_01")
    ordinary = make_wallet(owner, funded=70, shard="shard_01")

    wait_until(lambda: balance_and_shard(client, ordinary.id) == (70, "shard_01"), 20, "the ordinary wallet")
    wait_until(lambda: confirmed_lsn(cdc, "shard_01") > after_origin, 20, "shard_01's slot confirmed past the copy")
    assert streamed_from(client, "shard_01", copied.id) == 0
    assert count(client, "SELECT count() FROM audit.changes WHERE shard = 'shard_01'"
                 " AND JSONExtractString(coalesce(new_row, old_row), 'wallet_id') = {id:String}",
                 {"id": str(copied.id)}) == 0  # fmt: skip
    assert [row[:2] for row in wallet_rows(client, copied.id)] == [("shard_00", 500)]
    assert streamed_from(client, "shard_01", ordinary.id) == 2  # created, then funded

    wait_until(lambda: (cdc.status() or {})["shards"]["shard_01"]["origin_transactions_skipped"] == 2, 10,
               "the skipped transactions in the status")  # fmt: skip
    assert cdc.status()["shards"]["shard_00"]["origin_transactions_skipped"] == 0  # type: ignore[index]
    assert skipped_in_metrics("shard_01") == metric_before + 2
    assert reconcile(client, wait=15).ok


def test_what_a_subscription_copies_into_a_target_stays_out_of_the_store(cdc: CdcProcess, buckets: list[int]) -> None:
    # The mover's copy itself: a publication with a row filter on the source, a subscription on
    # the target. Its initial copy of each table and the changes it applies afterwards are
    # transactions with the subscription's origins (pg_<oid>_<relid>, pg_<oid>).
    owner, _ = make_client()
    wallet = wallet_create(owner_id=owner.id, currency="USD", bucket=STRANDED)
    wallet_fund(wallet_id=wallet.id, amount_minor=500, reference="before-the-copy")
    cdc.start()
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "the first catch-up")
    tables = ("ledger_wallet", "ledger_entry")
    name = f"audit_test_copy_{uuid.uuid4().hex[:8]}"
    source = settings.SHARD_MAP.shards["shard_00"]
    with connect("shard_00", autocommit=True) as src, connect("shard_01", autocommit=True) as dst:
        src.execute(
            sql.SQL("CREATE PUBLICATION {} FOR {}").format(
                sql.Identifier(name),
                sql.SQL(", ").join(
                    sql.SQL("TABLE {} WHERE ({})").format(
                        sql.Identifier(t),
                        sql.SQL(range_filter_sql(t, STRANDED, STRANDED)),  # type: ignore[arg-type]
                    )
                    for t in tables
                ),
            )
        )
        dst.execute(
            sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}").format(
                sql.Identifier(name),
                sql.Literal(f"host={source.host} port={source.port} dbname={source.name} user={source.user}"),
                sql.Identifier(name),
            )
        )
        try:
            wait_until(lambda: raw_query("shard_01", "SELECT count(*) FROM ledger_entry WHERE wallet_id = %s",
                                         [wallet.id]) == [(1,)], 30, "the initial copy")  # fmt: skip
            wallet_fund(wallet_id=wallet.id, amount_minor=25, reference="during-the-copy")
            wait_until(lambda: raw_query("shard_01", "SELECT balance_minor FROM ledger_wallet WHERE id = %s",
                                         [wallet.id]) == [(525,)], 30, "the applied change")  # fmt: skip
            ordinary = make_wallet(owner, funded=9, shard="shard_01")
            wait_until(lambda: balance_and_shard(client, ordinary.id) == (9, "shard_01"), 20, "the ordinary wallet")
            assert streamed_from(client, "shard_01", wallet.id) == 0
            assert [row[:2] for row in wallet_rows(client, wallet.id)] == [("shard_00", 525)]
            wait_until(lambda: (cdc.status() or {})["shards"]["shard_01"]["origin_transactions_skipped"] >= 3, 10,
                       "two initial copies and one applied change counted as skipped")  # fmt: skip
        finally:
            dst.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(name)))
            src.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
    delete_bucket("shard_01", STRANDED)
    assert reconcile(client, wait=15).ok


def test_a_moved_wallet_ends_with_the_targets_state_though_the_target_is_behind_in_the_wal(
    cdc: CdcProcess, buckets: list[int]
) -> None:
    owner, _ = make_client()
    wallet = wallet_create(owner_id=owner.id, currency="USD", bucket=MOVED)
    wallet_fund(wallet_id=wallet.id, amount_minor=1_000, reference="before-the-move")
    restarted = CdcProcess()  # a second reader, stopped and started again across the move
    try:
        cdc.start()
        restarted.start()
        client, other = cdc.client(), restarted.client()
        # The premise: shard_00's WAL is far ahead, so its last change of the wallet has a higher
        # LSN than any change shard_01 makes next.
        push_wal_past("shard_00", wal_lsn("shard_01") + (64 << 20))
        wallet_withdraw(wallet_id=wallet.id, amount_minor=100, reference="last-on-the-source")
        for store in (client, other):
            wait_until(lambda store=store: balance_and_shard(store, wallet.id) == (900, "shard_00"), 20, "900")

        epoch = move_bucket("shard_00", "shard_01", MOVED)
        assert epoch > 1
        wait_until(lambda: count(other, "SELECT count() FROM audit.move_journal FINAL WHERE kind = 'own'"), 20,
                   "the own marker in the second store")  # fmt: skip
        restarted.stop()  # a clean stop: everything it received is confirmed, the own marker included

        assert shard_map().alias_for_bucket(MOVED) == "shard_01"
        wallet_fund(wallet_id=wallet.id, amount_minor=5, reference="first-on-the-target")
        delete_bucket("shard_00", MOVED)  # the mover's clean-up of the source, under its origin
        restarted.start()
        other = restarted.client()  # the same port, a new process

        for store in (client, other):
            wait_until(lambda store=store: balance_and_shard(store, wallet.id) == (905, "shard_01"), 30,
                       "the target's state in the store")  # fmt: skip
        [(source_lsn,)] = client.query(
            "SELECT max(commit_lsn) FROM audit.changes WHERE shard = 'shard_00' AND table_name = 'ledger_wallet'"
            " AND JSONExtractString(new_row, 'id') = {id:String}",
            parameters={"id": str(wallet.id)},
        ).result_rows
        [(_, _, target_lsn, _, version)] = wallet_rows(client, wallet.id)
        assert target_lsn < source_lsn  # without the epoch, the source's older state would have won
        assert version >> EPOCH_SHIFT == epoch

        # The reader that restarted after the move read the own marker from shard_01's table:
        # it stamped the target's change exactly as the reader that saw the marker stream by.
        def versions(store: Any) -> set[tuple[Any, ...]]:
            entries = store.query(
                "SELECT shard, entry_seq, commit_lsn, seq, version FROM audit.ledger_entries FINAL"
                " WHERE wallet_id = {id:UUID} AND is_deleted = 0 AND shard = 'shard_01'",
                parameters={"id": str(wallet.id)},
            ).result_rows
            return {*entries, *wallet_rows(store, wallet.id)}

        assert versions(client) == versions(other)
        assert len(versions(client)) == 2  # the target's entry and the wallet row
        # The clean-up on the source deleted nothing in the store: all three entries are there.
        for store in (client, other):
            assert count(store, "SELECT count() FROM audit.ledger_entries FINAL WHERE wallet_id = {id:UUID}"
                         " AND is_deleted = 0", {"id": str(wallet.id)}) == 3  # fmt: skip
            report = reconcile(store, wait=15)
            assert report.ok, report.differences

        journal = client.query(
            "SELECT shard, kind, first_bucket, last_bucket, source, target, epoch FROM audit.move_journal FINAL"
            " ORDER BY commit_time"
        ).result_rows
        assert journal == [
            ("shard_00", "fence", MOVED, MOVED, "shard_00", "shard_01", epoch),
            ("shard_01", "own", MOVED, MOVED, "shard_00", "shard_01", epoch),
        ]
        out = StringIO()
        call_command("audit_query", "bucket_moves", "--param", f"bucket={MOVED}", "--port", str(cdc.port), stdout=out)
        [row] = [line for line in out.getvalue().splitlines() if line.startswith(f"{epoch} ")]
        assert re.search(rf"\| {MOVED} +\| {MOVED} +\| shard_00 \| shard_01 \| {epoch} .*\| moved$", row), row
        status = cdc.status()
        assert status is not None
        assert status["shards"]["shard_01"]["stream_epoch"] == epoch
    finally:
        restarted.cleanup()


def test_the_initial_snapshot_takes_only_the_buckets_a_shard_serves_at_its_epoch(
    cdc: CdcProcess, buckets: list[int]
) -> None:
    owner, _ = make_client()
    moved = wallet_create(owner_id=owner.id, currency="USD", bucket=MOVED)
    wallet_fund(wallet_id=moved.id, amount_minor=700, reference="on-the-source")
    stranded = wallet_create(owner_id=owner.id, currency="USD", bucket=STRANDED)
    wallet_fund(wallet_id=stranded.id, amount_minor=300, reference="stays-on-the-source")
    epoch = move_bucket("shard_00", "shard_01", MOVED)  # not cleaned up: shard_00 keeps its old copy
    wallet_fund(wallet_id=moved.id, amount_minor=1, reference="on-the-target")
    copy_bucket("shard_00", "shard_01", STRANDED)  # a copy under way: shard_01 does not serve it

    cdc.start()
    client = cdc.client()
    report = reconcile(client, wait=20)
    assert report.ok, report.differences

    def snapshot_rows(wallet_id: uuid.UUID) -> list[tuple[Any, ...]]:
        return client.query(
            "SELECT shard, JSONExtractInt(new_row, 'balance_minor') FROM audit.changes FINAL WHERE op = 'snapshot'"
            " AND table_name = 'ledger_wallet' AND JSONExtractString(new_row, 'id') = {id:String}",
            parameters={"id": str(wallet_id)},
        ).result_rows

    assert snapshot_rows(moved.id) == [("shard_01", 701)]
    assert snapshot_rows(stranded.id) == [("shard_00", 300)]
    [(shard, balance, _, _, version)] = wallet_rows(client, moved.id)
    assert (shard, balance, version >> EPOCH_SHIFT) == ("shard_01", 701, epoch)
    [(_, _, _, _, version)] = wallet_rows(client, stranded.id)
    assert version >> EPOCH_SHIFT == 0  # shard_00 has never been a move's target
    assert count(client, "SELECT count() FROM audit.move_journal FINAL") == 2


def test_real_moves_there_and_back_keep_the_store_equal_to_the_shards(cdc: CdcProcess) -> None:
    """move_buckets itself, twice, with the CDC running: nothing counted twice, the journal shows both."""
    from apps.sharding.mover import Mover, plan_move
    from tests.sharding.moving import restore_file_layout

    owner, _ = make_client()
    wallets = [wallet_create(owner_id=owner.id, currency="USD", bucket=b) for b in (100, 110)]
    for i, wallet in enumerate(wallets):
        wallet_fund(wallet_id=wallet.id, amount_minor=1000 + i, reference=f"real-move-{i}")
    cdc.start()
    client = cdc.client()
    try:
        there = Mover(plan_move(96, 127, "shard_01"), cleanup_delay=0).run()
        wallet_withdraw(wallet_id=wallets[0].id, amount_minor=10, reference="after-the-move")
        back = Mover(plan_move(96, 127, "shard_00"), cleanup_delay=0).run()
        wallet_fund(wallet_id=wallets[1].id, amount_minor=5, reference="back-home")
        wait_until(lambda: balance_and_shard(client, wallets[1].id) == (1006, "shard_00"), 30, "the last deposit")
        assert balance_and_shard(client, wallets[0].id) == (990, "shard_01")  # last written by shard_01's stream
        assert reconcile(client, wait=10).ok
        journal = client.query(
            "SELECT shard, kind, epoch FROM audit.move_journal FINAL WHERE first_bucket = 96 ORDER BY epoch, kind"
        ).result_rows
        assert journal == [
            ("shard_00", "fence", there.epoch), ("shard_01", "own", there.epoch),
            ("shard_01", "fence", back.epoch), ("shard_00", "own", back.epoch),
        ]  # fmt: skip
    finally:
        restore_file_layout()


def test_a_truncate_applied_after_a_move_deletes_only_the_buckets_served_at_its_position(
    cdc: CdcProcess, buckets: list[int]
) -> None:
    owner, _ = make_client()
    kept = wallet_create(owner_id=owner.id, currency="USD", bucket=MOVED)
    wallet_fund(wallet_id=kept.id, amount_minor=300, reference="before-the-truncate")
    handed = wallet_create(owner_id=owner.id, currency="USD", bucket=HANDED_OVER)
    wallet_fund(wallet_id=handed.id, amount_minor=200, reference="moved-before-the-truncate")
    cdc.start()
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "the first catch-up")
    move_bucket("shard_00", "shard_01", HANDED_OVER)  # shard_01 serves it from a newer epoch than shard_00's
    cdc.stop()
    # While the CDC is down: shard_01 is truncated, then another bucket moves in. The reader
    # applies the truncate afterwards, when shard_01 owns both buckets.
    raw_query("shard_01", "TRUNCATE ledger_entry, ledger_wallet CASCADE")
    move_bucket("shard_00", "shard_01", MOVED)
    cdc.start()
    wait_until(lambda: (cdc.status() or {})["shards"]["shard_01"]["truncations"] >= 2, 20, "the truncation")

    assert balance_and_shard(client, handed.id) is None  # served by shard_01 at the truncate: emptied
    assert balance_and_shard(client, kept.id) == (300, "shard_00")  # moved in after it: untouched


def test_a_resnapshot_after_a_range_moved_away_during_the_gap_names_the_shard_to_resnapshot_too(
    cdc: CdcProcess, buckets: list[int]
) -> None:
    owner, _ = make_client()
    wallet = wallet_create(owner_id=owner.id, currency="USD", bucket=MOVED)
    wallet_fund(wallet_id=wallet.id, amount_minor=100, reference="streamed")
    cdc.start()
    wait_until(lambda: caught_up(cdc.client()), 20, "the first catch-up")
    cdc.stop()
    assert drop_slot(shard_map().shards["shard_00"], cdc.slot)
    # In the gap: a change the store never sees, then the range moves to shard_01.
    wallet_fund(wallet_id=wallet.id, amount_minor=5, reference="in-the-gap")
    move_bucket("shard_00", "shard_01", MOVED)

    cdc.start(wait=False)
    wait_until(lambda: ((cdc.status() or {}).get("shards") or {}).get("shard_00", {}).get("stopped") == "slot_missing",
               40, "the stop")  # fmt: skip
    out = StringIO()
    call_command("cdc_resnapshot", "shard_00", "--reason", "test", "--wait", "60", stdout=out)
    assert f"buckets {MOVED}..{MOVED} moved to shard_01 during the gap" in out.getvalue()
    assert "re-snapshot shard_01 too" in out.getvalue()


def test_a_first_snapshot_while_a_range_is_fenced_and_owned_by_no_shard_still_captures_it(
    cdc: CdcProcess, buckets: list[int]
) -> None:
    owner, _ = make_client()
    wallet = wallet_create(owner_id=owner.id, currency="USD", bucket=MOVED)
    wallet_fund(wallet_id=wallet.id, amount_minor=700, reference="on-the-source")
    epoch = control_epoch() + 1
    copy_bucket("shard_00", "shard_01", MOVED)
    fence("shard_00", "shard_01", MOVED, epoch)  # mid-switch: neither shard serves the bucket

    cdc.start()  # a new store: its first snapshots now
    client = cdc.client()
    own("shard_00", "shard_01", MOVED, epoch)  # the switch, after both snapshots
    wallet_fund(wallet_id=wallet.id, amount_minor=1, reference="on-the-target")

    wait_until(lambda: balance_and_shard(client, wallet.id) == (701, "shard_01"), 20, "the target's change")
    snapshot = count(client, "SELECT count() FROM audit.changes FINAL WHERE op = 'snapshot' AND shard = 'shard_00'"
                     " AND JSONExtractString(new_row, 'id') = {id:String}", {"id": str(wallet.id)})  # fmt: skip
    assert snapshot == 1  # from the fenced source: the only copy no one could change
    entries = "SELECT count() FROM audit.ledger_entries FINAL WHERE wallet_id = {id:UUID} AND is_deleted = 0"
    assert count(client, entries, {"id": str(wallet.id)}) == 2  # the source's entry and the target's
