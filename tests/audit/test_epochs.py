"""Stream epochs and the row versions built on them, without a database."""

from datetime import UTC, datetime

from apps.audit.epochs import StreamEpochs, row_version
from apps.audit.sink import AuditSink, Change, Transaction


def marker(marker_id: int, wal_lsn: int | str, epoch: int, kind: str = "own") -> dict[str, object]:
    return {"id": marker_id, "kind": kind, "wal_lsn": wal_lsn, "epoch": epoch}


def test_the_epoch_of_a_commit_is_the_highest_of_the_own_markers_written_before_it() -> None:
    epochs = StreamEpochs()
    assert epochs.at(10**12) == 0
    assert epochs.add(marker(1, 1_000, 3))
    assert epochs.add(marker(2, "0/1F40", 5))  # 8000, as the shard's table spells it
    assert not epochs.add(marker(3, 500, 9, kind="fence"))  # only 'own' markers count
    assert not epochs.add(marker(1, 1_000, 3))  # streamed again after being loaded
    assert len(epochs) == 2
    assert [epochs.at(lsn) for lsn in (999, 1_000, 1_001, 8_000, 8_001)] == [0, 0, 3, 3, 5]


def test_a_later_epoch_outranks_a_higher_position_from_another_shard() -> None:
    source_last = row_version(2, 0x9_0000_0000, 7)
    target_first = row_version(3, 0x1_0000_0000, 1)
    assert target_first > source_last
    assert row_version(0, 0x16B374D848, 5) == (0x16B374D848 << 32) | 5  # no move yet: as before

    tx = Transaction("shard_01", 1, 0x1_0000_0000, 0x1_0000_0040, datetime(2026, 11, 30, tzinfo=UTC), stream_epoch=3)
    row = {"id": 1, "move_id": 4, "kind": "own", "first_bucket": 100, "last_bucket": 100, "source": "shard_00",
           "target": "shard_01", "epoch": 3, "wal_lsn": 0xFFFF_FF00, "created_at": tx.commit_time}  # fmt: skip
    tx.changes.append(Change("sharding_move_marker", "insert", None, row, 1))
    columns, [stored] = AuditSink(client=None).rows_for([tx])["audit.move_journal"]
    assert dict(zip(columns, stored, strict=True))["version"] == target_first
    assert dict(zip(columns, stored, strict=True))["shard"] == "shard_01"
