"""How the store keys what it holds: its position per shard follows the WAL, not the wall clock;
snapshot rows and streamed changes never share a key; the move journal is always captured.
Real shards, a real chDB store (in process, or `run_cdc`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from apps.audit import sink as sink_module
from apps.audit.epochs import MARKER_TABLE
from apps.audit.pgoutput import str_to_lsn
from apps.audit.sink import AuditSink, Change, StorePosition, Transaction
from tests.audit.cdc import CdcProcess
from tests.audit.helpers import count
from tests.audit.replay import in_process_reader
from tests.factories import ALL_DATABASES, make_client, make_wallet, raw_query


class _ClockStepsBack(datetime):
    """The wall clock after an NTP step back of an hour."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) - timedelta(hours=1)


def test_the_stores_position_is_the_highest_one_though_the_clock_stepped_back(
    store_sink: AuditSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard = f"clock_{uuid.uuid4().hex[:8]}"
    one, two = ("ledger_wallet",), ("ledger_wallet", "ledger_entry")
    store_sink.record_position(StorePosition(shard, "slot", 1_000, 0, one))
    monkeypatch.setattr(sink_module, "datetime", _ClockStepsBack)
    store_sink.record_position(StorePosition(shard, "slot", 2_000, 0, one))
    position = store_sink.position(shard)
    assert position is not None
    assert position.confirmed_lsn == 2_000
    # A backfill records the same position with more tables: the later row wins.
    store_sink.record_position(StorePosition(shard, "slot", 2_000, 0, two))
    # A re-snapshot on a server that failed over may start lower: its generation wins.
    store_sink.record_position(StorePosition(shard, "slot2", 1_500, 0, two, generation=1))
    store_sink.client.command("OPTIMIZE TABLE audit.stream_positions FINAL")  # merges keep the same row
    position = store_sink.position(shard)
    assert position is not None
    assert (position.slot_name, position.confirmed_lsn, position.tables, position.generation) == (
        "slot2",
        1_500,
        two,
        1,
    )


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_backfilled_rows_never_share_a_key_with_a_change_streamed_at_the_stores_position(
    store_sink: AuditSink,
) -> None:
    owner, _ = make_client()
    wallets = [make_wallet(owner, funded=10, shard="shard_00") for _ in range(3)]
    reader = in_process_reader(store_sink, "shard_00")
    [(now,)] = raw_query("shard_00", "SELECT pg_current_wal_lsn()::text")
    at = str_to_lsn(now)
    # The store stood at `at` when ledger_wallet joined the captured set; the next transaction
    # streamed may commit exactly there (its commit record starts where the last one ended).
    reader._backfill(["ledger_wallet"], StorePosition("shard_00", reader.slot, at, 0, ("ledger_entry",)))
    # Streamed in the shard's stream epoch at that position (moves earlier in the session raised it).
    streamed = Transaction("shard_00", 1, at, at + 64, datetime.now(tz=UTC), stream_epoch=reader.epochs.at(at))
    for seq, wallet in enumerate(wallets, start=1):
        row = {"id": wallet.id, "owner_id": owner.id, "currency": "USD", "balance_minor": 11, "status": "active",
               "last_entry_seq": 2, "created_at": wallet.created_at, "updated_at": datetime.now(tz=UTC)}  # fmt: skip
        streamed.changes.append(Change("ledger_wallet", "update", row, row, seq))
    store_sink.write([streamed])

    [(copied,)] = raw_query("shard_00", "SELECT count(*) FROM ledger_wallet WHERE sharding_serves(id)")
    near = "SELECT op, count() FROM audit.changes FINAL WHERE shard = 'shard_00' AND commit_lsn BETWEEN {lo:UInt64} AND {hi:UInt64} GROUP BY op ORDER BY op"  # noqa: E501
    rows = dict(store_sink.client.query(near, parameters={"lo": at - 1, "hi": at}).result_rows)
    assert rows == {"update": len(wallets), "snapshot": copied}
    # The streamed changes, newer, win in the typed table.
    live = "SELECT count() FROM audit.wallets FINAL WHERE wallet_id = {id:UUID} AND balance_minor = 11"
    assert all(count(store_sink.client, live, {"id": str(w.id)}) == 1 for w in wallets)


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
@pytest.mark.slow
def test_the_move_journal_is_captured_though_the_configuration_leaves_it_out(cdc: CdcProcess) -> None:
    cdc.start(env={"SHARDWALLET_AUDIT_TABLES": "ledger_wallet,ledger_entry"})
    for alias in ("shard_00", "shard_01"):
        published = raw_query(
            alias, "SELECT tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1", [cdc.publication]
        )
        assert [t for (t,) in published] == ["ledger_entry", "ledger_wallet", MARKER_TABLE]
