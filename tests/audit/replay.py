"""A reader fed real pgoutput messages from a real shard, in process, with a real chDB store.

The messages are peeked from a temporary slot through the SQL interface (the same bytes the
streaming protocol carries); `ReplayCursor` hands them to `ShardReader._consume` the way
psycopg2's replication cursor does and records the positions the reader confirms.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from apps.audit.pgoutput import str_to_lsn
from apps.audit.reader import ShardReader, drop_slot, ensure_publication
from apps.audit.sink import AuditSink
from apps.audit.status import StatusBoard
from apps.sharding.routing import shard_map
from tests.audit.moves import connect


@dataclass
class Message:
    payload: bytes
    data_start: int


@dataclass
class ReplayCursor:
    """Hands out `messages`, then sets `stop`; keeps every (messages read, flush_lsn) confirmed."""

    messages: list[Message]
    stop: threading.Event
    read: int = 0
    wal_end: int = 0
    feedback: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ready, writer = os.pipe()  # always readable: select() never waits
        os.write(writer, b"x")

    def read_message(self) -> Message | None:
        if self.read == len(self.messages):
            self.stop.set()
            return None
        message = self.messages[self.read]
        self.read += 1
        self.wal_end = max(self.wal_end, message.data_start)
        return message

    def send_feedback(self, *, write_lsn: int, flush_lsn: int, force: bool) -> None:
        self.feedback.append((self.read, flush_lsn))

    def fileno(self) -> int:
        return self._ready


@contextmanager
def recorded_slot(alias: str) -> Iterator[tuple[str, str]]:
    """A temporary pgoutput slot and publication of the captured tables on `alias`."""
    server = shard_map().shards[alias]
    name = f"audit_replay_{uuid.uuid4().hex[:10]}"
    ensure_publication(server, name, list(settings.AUDIT_TABLES))
    with connect(alias, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [name])
    try:
        yield name, name
    finally:
        drop_slot(server, name)
        with connect(alias, autocommit=True) as conn:
            conn.execute(f'DROP PUBLICATION IF EXISTS "{name}"')


def peek(alias: str, slot: str, publication: str) -> list[Message]:
    """Everything the slot holds, as pgoutput messages, without consuming it."""
    with connect(alias, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
            " 'proto_version', '1', 'publication_names', %s, 'messages', 'true')",
            [slot, publication],
        ).fetchall()
    return [Message(bytes(data), str_to_lsn(lsn)) for lsn, data in rows]


def in_process_reader(sink: AuditSink, alias: str, **options: Any) -> ShardReader:
    """A reader of `alias` writing to `sink`, not started (its steps are called directly)."""
    return ShardReader(
        shard_map().shards[alias], sink, StatusBoard([alias], "chdb", None), threading.Event(), slot="audit_replay",
        store=uuid.uuid4(), publication="audit_replay", tables=list(settings.AUDIT_TABLES),
        **{"batch_max_changes": 20_000, "batch_max_seconds": 3600.0, **options},
    )  # fmt: skip


def replay(sink: AuditSink, alias: str, messages: list[Message], **options: Any) -> tuple[ShardReader, ReplayCursor]:
    """Run a reader of `alias` over `messages` until they are used up; the reader's last batch is flushed."""
    reader = in_process_reader(sink, alias, **options)
    cursor = ReplayCursor(messages, reader.stop)
    reader._consume(cursor)  # the reader's loop itself is what is tested
    return reader, cursor
