"""A decoder for PostgreSQL's built-in `pgoutput` logical replication plugin (protocol 1).

Only what the audit stream needs: Begin, Commit, Relation, Type, Origin, Insert, Update,
Delete, Truncate, Message (see the PostgreSQL docs, "Logical Replication Message Formats"). Column
values arrive as text and are turned into exact Python values by type OID: integers stay
`int` (money is BIGINT minor units and must never pass through a float), numeric becomes
`Decimal`, uuid `UUID`, timestamptz an aware UTC `datetime`.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

# Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_INT16 = struct.Struct("!h")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!bQQq")
_ORIGIN = struct.Struct("!Q")
_MESSAGE = struct.Struct("!bQ")


class PgOutputError(ValueError):
    """A message the decoder cannot read: the stream is not pgoutput protocol 1."""


class _Unchanged:
    """A TOASTed value the update did not touch; pgoutput does not resend it."""

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST = _Unchanged()


def _timestamptz(text: str) -> datetime | str:
    if text in ("infinity", "-infinity"):
        return text
    return datetime.fromisoformat(text).astimezone(UTC)


def _timestamp(text: str) -> datetime | str:
    if text in ("infinity", "-infinity"):
        return text
    return datetime.fromisoformat(text)


def _bytea(text: str) -> bytes:
    return bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode()


# Text output of each type -> Python value. Anything not listed stays text.
CONVERTERS: dict[int, Any] = {
    16: lambda t: t == "t",  # bool
    17: _bytea,  # bytea
    20: int,  # int8: the money columns
    21: int,  # int2
    23: int,  # int4
    26: int,  # oid
    700: float,  # float4 (never money)
    701: float,  # float8 (never money)
    1700: Decimal,  # numeric: exact
    1082: lambda t: t if t in ("infinity", "-infinity") else date.fromisoformat(t),
    1114: _timestamp,
    1184: _timestamptz,
    2950: uuid.UUID,
    3220: lambda t: str_to_lsn(t),  # pg_lsn: a WAL position, as the integer the stream uses
}


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    is_key: bool


@dataclass(frozen=True)
class Relation:
    relid: int
    namespace: str
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True)
class Origin:
    """Sent after Begin when the transaction carries a replication origin: a subscription's
    apply worker (`pg_<oid>`), or a session that set one (`pg_replication_origin_session_setup`)."""

    name: str
    origin_lsn: int  # the transaction's commit position on the origin's side, 0 if none was set


@dataclass(frozen=True)
class RowChange:
    """An Insert, Update or Delete. `old` is the whole old row under REPLICA IDENTITY FULL,
    only the key columns under the default identity, and None for inserts (or for updates
    that did not change the key under the default identity)."""

    op: str  # insert | update | delete
    relation: Relation
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    old_is_key_only: bool = False


@dataclass(frozen=True)
class LogicalMessage:
    """A message a session wrote into the WAL (`pg_logical_emit_message`); the reader's
    heartbeats are non-transactional ones (sent as soon as decoded, outside any transaction)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True)
class Truncate:
    relations: tuple[Relation, ...]
    cascade: bool
    restart_identity: bool


@dataclass
class Decoder:
    """Stateful: Relation messages describe the tables that later row messages refer to.

    One decoder per replication connection; the server re-sends Relation messages after
    a reconnect, before the first change that needs them.
    """

    relations: dict[int, Relation] = field(default_factory=dict)

    def decode(
        self, payload: bytes
    ) -> Begin | Commit | Origin | Relation | RowChange | Truncate | LogicalMessage | None:
        """One pgoutput message -> an event, or None for messages the audit ignores."""
        kind = payload[:1]
        if kind == b"B":
            final_lsn, ts, xid = _BEGIN.unpack_from(payload, 1)
            return Begin(final_lsn, PG_EPOCH + timedelta(microseconds=ts), xid)
        if kind == b"C":
            _flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(payload, 1)
            return Commit(commit_lsn, end_lsn, PG_EPOCH + timedelta(microseconds=ts))
        if kind == b"I":
            return self._insert(payload)
        if kind == b"U":
            return self._update(payload)
        if kind == b"D":
            return self._delete(payload)
        if kind == b"R":
            return self._relation(payload)
        if kind == b"T":
            return self._truncate(payload)
        if kind == b"O":
            (origin_lsn,) = _ORIGIN.unpack_from(payload, 1)
            name, _ = _string(payload, 9)
            return Origin(name, origin_lsn)
        if kind == b"M":
            flags, lsn = _MESSAGE.unpack_from(payload, 1)
            prefix, pos = _string(payload, 10)
            (length,) = _INT32.unpack_from(payload, pos)
            return LogicalMessage(bool(flags & 1), lsn, prefix, bytes(payload[pos + 4 : pos + 4 + length]))
        if kind == b"Y":  # a type's description: values arrive as text, converted by type OID
            return None
        raise PgOutputError(f"unknown pgoutput message type {kind!r}")

    def row_relation(self, payload: bytes) -> Relation | None:
        """The relation an Insert, Update or Delete refers to, without decoding its tuples;
        None for any other message (or a relation not described yet: decode() says why)."""
        if payload[:1] not in (b"I", b"U", b"D"):
            return None
        (relid,) = _UINT32.unpack_from(payload, 1)
        return self.relations.get(relid)

    # -- messages -----------------------------------------------------------------------

    def _relation(self, buf: bytes) -> Relation:
        (relid,) = _UINT32.unpack_from(buf, 1)
        pos = 5
        namespace, pos = _string(buf, pos)
        name, pos = _string(buf, pos)
        identity = chr(buf[pos])
        (ncols,) = _INT16.unpack_from(buf, pos + 1)
        pos += 3
        columns = []
        for _ in range(ncols):
            flags = buf[pos]
            col_name, pos = _string(buf, pos + 1)
            (type_oid,) = _UINT32.unpack_from(buf, pos)
            pos += 8  # type oid + type modifier
            columns.append(Column(col_name, type_oid, bool(flags & 1)))
        relation = Relation(relid, namespace or "pg_catalog", name, identity, tuple(columns))
        self.relations[relid] = relation
        return relation

    def _rel(self, buf: bytes) -> Relation:
        (relid,) = _UINT32.unpack_from(buf, 1)
        try:
            return self.relations[relid]
        except KeyError:
            raise PgOutputError(f"change for relation {relid} before its Relation message") from None

    def _insert(self, buf: bytes) -> RowChange:
        relation = self._rel(buf)
        if buf[5:6] != b"N":
            raise PgOutputError("Insert without a new tuple")
        new, _ = _tuple(buf, 6, relation)
        return RowChange("insert", relation, None, new)

    def _update(self, buf: bytes) -> RowChange:
        relation = self._rel(buf)
        pos = 5
        old = None
        key_only = False
        marker = buf[pos : pos + 1]
        if marker in (b"K", b"O"):
            old, pos = _tuple(buf, pos + 1, relation)
            key_only = marker == b"K"
            marker = buf[pos : pos + 1]
        if marker != b"N":
            raise PgOutputError("Update without a new tuple")
        new, _ = _tuple(buf, pos + 1, relation)
        if old is not None and not key_only:
            # Unchanged TOAST values are only in the old row: copy them over.
            for name, value in new.items():
                if value is UNCHANGED_TOAST:
                    new[name] = old[name]
        return RowChange("update", relation, old, new, key_only)

    def _delete(self, buf: bytes) -> RowChange:
        relation = self._rel(buf)
        marker = buf[5:6]
        if marker not in (b"K", b"O"):
            raise PgOutputError("Delete without an old tuple")
        old, _ = _tuple(buf, 6, relation)
        return RowChange("delete", relation, old, None, marker == b"K")

    def _truncate(self, buf: bytes) -> Truncate:
        (nrels,) = _INT32.unpack_from(buf, 1)
        options = buf[5]
        relids = struct.unpack_from(f"!{nrels}I", buf, 6)
        return Truncate(tuple(self.relations[r] for r in relids), bool(options & 1), bool(options & 2))


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int, relation: Relation) -> tuple[dict[str, Any], int]:
    (ncols,) = _INT16.unpack_from(buf, pos)
    pos += 2
    if ncols != len(relation.columns):
        raise PgOutputError(f"{relation.name}: tuple has {ncols} columns, relation {len(relation.columns)}")
    row: dict[str, Any] = {}
    for column in relation.columns:
        kind = buf[pos]
        pos += 1
        if kind == 0x6E:  # 'n': null
            row[column.name] = None
        elif kind == 0x75:  # 'u': unchanged TOASTed value
            row[column.name] = UNCHANGED_TOAST
        elif kind in (0x74, 0x62):  # 't' text, 'b' binary (not requested, so text in practice)
            (length,) = _INT32.unpack_from(buf, pos)
            pos += 4
            raw = buf[pos : pos + length]
            pos += length
            if kind == 0x62:
                row[column.name] = bytes(raw)
                continue
            text = raw.decode()
            convert = CONVERTERS.get(column.type_oid)
            row[column.name] = convert(text) if convert else text
        else:
            raise PgOutputError(f"{relation.name}.{column.name}: unknown tuple data kind {kind!r}")
    return row, pos


def lsn_to_str(lsn: int) -> str:
    """PostgreSQL's textual LSN (`16/B374D848`)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def str_to_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)
