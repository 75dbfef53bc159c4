"""The pgoutput decoder on hand-built protocol messages: exact values, old rows, TOAST."""

import struct
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from apps.audit.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Decoder,
    Origin,
    PgOutputError,
    RowChange,
    Truncate,
    lsn_to_str,
    str_to_lsn,
)
from apps.audit.sink import AuditSink, Change, Transaction

COLUMNS = [("id", 2950, 1), ("balance_minor", 20, 0), ("rate", 1700, 0), ("at", 1184, 0), ("note", 25, 0)]


def relation(relid: int = 16400) -> bytes:
    body = b"R" + struct.pack("!I", relid) + b"public\0ledger_wallet\0" + b"f" + struct.pack("!h", len(COLUMNS))
    for name, oid, flags in COLUMNS:
        body += struct.pack("!b", flags) + name.encode() + b"\0" + struct.pack("!Ii", oid, -1)
    return body


def tuple_data(*values: str | bytes | None) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value == b"u":
            out += b"u"
        else:
            raw = value.encode() if isinstance(value, str) else value
            out += b"t" + struct.pack("!i", len(raw)) + raw
    return out


WALLET = "01a20adf-dd1b-7000-b8e6-d166dff64b4c"
BIG = str(2**62 + 12_345)


def test_values_become_exact_python_values() -> None:
    decoder = Decoder()
    decoder.decode(relation())
    row = tuple_data(WALLET, BIG, "12345678901234567890.000000001", "2026-11-24 01:02:03.123456+01", None)
    change = decoder.decode(b"I" + struct.pack("!I", 16400) + b"N" + row)
    assert isinstance(change, RowChange)
    assert change.op == "insert"
    assert change.old is None
    assert change.new == {
        "id": uuid.UUID(WALLET),
        "balance_minor": 2**62 + 12_345,
        "rate": Decimal("12345678901234567890.000000001"),
        "at": datetime(2026, 11, 24, 0, 2, 3, 123456, tzinfo=UTC),
        "note": None,
    }
    assert type(change.new["balance_minor"]) is int


def test_an_update_carries_the_old_row_and_fills_unchanged_toast_from_it() -> None:
    decoder = Decoder()
    decoder.decode(relation())
    old = tuple_data(WALLET, "100", "1.5", "2026-11-24 00:00:00+00", "a long note")
    new = tuple_data(WALLET, "40", "1.5", "2026-11-24 00:00:01+00", b"u")
    change = decoder.decode(b"U" + struct.pack("!I", 16400) + b"O" + old + b"N" + new)
    assert isinstance(change, RowChange)
    assert change.old is not None
    assert change.new is not None
    assert (change.old["balance_minor"], change.new["balance_minor"]) == (100, 40)
    assert change.new["note"] == "a long note"
    assert not change.old_is_key_only


@pytest.mark.parametrize("old_tuple", [b"", b"K" + tuple_data(WALLET, None, None, None, None)], ids=["none", "key"])
def test_an_unchanged_toast_value_with_no_whole_old_row_stays_marked_and_the_sink_refuses_it(old_tuple: bytes) -> None:
    # Under the default replica identity nothing holds the value: it is never guessed (None, or
    # a stale copy), and a row carrying the marker is refused rather than stored without it.
    decoder = Decoder()
    decoder.decode(relation())
    new = tuple_data(WALLET, "40", "1.5", "2026-11-24 00:00:01+00", b"u")
    change = decoder.decode(b"U" + struct.pack("!I", 16400) + old_tuple + b"N" + new)
    assert isinstance(change, RowChange)
    assert change.new is not None
    assert change.new["note"] is UNCHANGED_TOAST
    assert change.new["balance_minor"] == 40
    tx = Transaction("shard_00", 1, 100, 120, datetime(2026, 11, 24, tzinfo=UTC))
    tx.changes.append(Change("ledger_wallet", "update", change.old, change.new, 1))
    with pytest.raises(TypeError, match="_Unchanged"):
        AuditSink(client=None).rows_for([tx])


def test_a_delete_under_the_default_identity_carries_the_key_only() -> None:
    decoder = Decoder()
    decoder.decode(relation())
    change = decoder.decode(b"D" + struct.pack("!I", 16400) + b"K" + tuple_data(WALLET, None, None, None, None))
    assert isinstance(change, RowChange)
    assert change.op == "delete"
    assert change.new is None
    assert change.old_is_key_only
    assert change.old is not None
    assert change.old["id"] == uuid.UUID(WALLET)


def test_begin_commit_and_truncate() -> None:
    decoder = Decoder()
    decoder.decode(relation())
    begin = decoder.decode(b"B" + struct.pack("!QqI", 0x16B374D848, 1_000_000, 777))
    assert begin == Begin(0x16B374D848, datetime(2000, 1, 1, 0, 0, 1, tzinfo=UTC), 777)
    commit = decoder.decode(b"C" + struct.pack("!bQQq", 0, 0x16B374D848, 0x16B374D878, 2_000_000))
    assert commit == Commit(0x16B374D848, 0x16B374D878, datetime(2000, 1, 1, 0, 0, 2, tzinfo=UTC))
    truncate = decoder.decode(b"T" + struct.pack("!ibI", 1, 2, 16400))
    assert isinstance(truncate, Truncate)
    assert [r.name for r in truncate.relations] == ["ledger_wallet"]
    assert truncate.restart_identity


def test_an_origin_message_names_the_transactions_replication_origin() -> None:
    # Sent after Begin by PostgreSQL 15 for a transaction with an origin (a subscription's
    # apply worker, or the mover's session): the reader leaves such transactions out.
    origin = Decoder().decode(b"O" + struct.pack("!Q", 0x16B374D848) + b"pg_16423\0")
    assert origin == Origin("pg_16423", 0x16B374D848)
    assert Decoder().decode(b"O" + struct.pack("!Q", 0) + b"shardwallet_mover\0") == Origin("shardwallet_mover", 0)


def test_a_pg_lsn_column_becomes_the_integer_position() -> None:
    decoder = Decoder()
    body = b"R" + struct.pack("!I", 16500) + b"public\0sharding_move_marker\0" + b"f" + struct.pack("!h", 2)
    body += struct.pack("!b", 1) + b"id\0" + struct.pack("!Ii", 20, -1)
    body += struct.pack("!b", 0) + b"wal_lsn\0" + struct.pack("!Ii", 3220, -1)
    decoder.decode(body)
    change = decoder.decode(b"I" + struct.pack("!I", 16500) + b"N" + tuple_data("7", "16/B374D848"))
    assert isinstance(change, RowChange)
    assert change.new == {"id": 7, "wal_lsn": 0x16B374D848}


def test_a_change_before_its_relation_is_an_error() -> None:
    with pytest.raises(PgOutputError, match="before its Relation"):
        Decoder().decode(b"I" + struct.pack("!I", 99) + b"N" + tuple_data("1"))


def test_lsn_text_round_trip() -> None:
    assert lsn_to_str(0x16B374D848) == "16/B374D848"
    assert str_to_lsn("16/B374D848") == 0x16B374D848


def test_infinite_dates_and_timestamps_stay_text_and_the_sink_refuses_them_in_a_typed_column() -> None:
    from apps.audit.pgoutput import CONVERTERS

    assert CONVERTERS[1082]("infinity") == "infinity"
    assert CONVERTERS[1082]("2026-11-30").isoformat() == "2026-11-30"
    assert CONVERTERS[1184]("-infinity") == "-infinity"
    from apps.audit.sink import TYPED_TABLES

    wallet: dict[str, object] = {
        "id": uuid.UUID(WALLET), "owner_id": 1, "currency": "USD", "balance_minor": 0, "status": "active",
        "last_entry_seq": 0, "created_at": datetime(2026, 1, 1, tzinfo=UTC), "updated_at": "infinity",
    }  # fmt: skip
    tx = Transaction("shard_00", 1, 100, 120, datetime.now(tz=UTC))
    with pytest.raises(ValueError, match="outside what the audit store can hold"):
        TYPED_TABLES["ledger_wallet"].row("shard_00", tx, Change("ledger_wallet", "insert", None, wallet, 1))
    wallet["updated_at"] = datetime(9999, 12, 31, tzinfo=UTC)
    with pytest.raises(ValueError, match="outside what the audit store can hold"):
        TYPED_TABLES["ledger_wallet"].row("shard_00", tx, Change("ledger_wallet", "insert", None, wallet, 1))
