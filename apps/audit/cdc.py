"""The CDC process: a reader thread per shard, one sink, the status file and (embedded
mode) the auditors' HTTP endpoint. `manage.py run_cdc` runs it until SIGTERM/SIGINT.

Without `--shard` it follows the shard map as the control database holds it: a shard
added while it runs gets its own reader (publication, slot, initial
snapshot) within `AUDIT_SHARD_POLL_SECONDS`, and appears in the status, /health and
/metrics like the others.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections

from apps.audit import store
from apps.audit.operator_trail import OperatorTrailCopier
from apps.audit.reader import ShardReader, conninfo, emit_heartbeat
from apps.audit.schema import migrate
from apps.audit.server import AuditHttpServer, QueryEngine
from apps.audit.sink import AuditSink
from apps.audit.slots import slot_states
from apps.audit.status import StatusBoard
from apps.audit.stream_state import slot_name, store_id
from apps.sharding.routing import shard_map
from apps.sharding.shardmap import ShardMapError

log = logging.getLogger(__name__)


class CdcProcess:
    def __init__(self, *, http_port: int | None, shards: list[str] | None = None) -> None:
        self.stop = threading.Event()
        # Shards named on the command line are all this process follows; else the whole map.
        self.follows_map = not shards
        self.aliases = list(shards or shard_map().aliases)
        self.client: Any = store.writer_client()
        self.applied = migrate(self.client)
        self.sink = AuditSink(self.client)
        self.store_id = store_id(self.sink)
        self.slot = slot_name(settings.AUDIT_SLOT_PREFIX, self.store_id)
        self.http_port = http_port if store.embedded() else None
        self.board = StatusBoard(self.aliases, store.backend_name(), self.http_port)
        self.board.store_id = str(self.store_id)
        self.board.slot = self.slot
        self.heartbeats = threading.Thread(target=self._beat, name="cdc-heartbeat", daemon=True)
        # Its own client: chDB's connection is not shared between threads here.
        self.trail = OperatorTrailCopier(store.writer_client())
        self.trail_thread = threading.Thread(
            target=self.trail.run,
            args=(self.stop, settings.AUDIT_OPERATOR_TRAIL_SECONDS),
            name="cdc-trail",
            daemon=True,
        )
        self.readers = {alias: self._reader(alias) for alias in self.aliases}
        self.http: AuditHttpServer | None = None
        if self.http_port is not None:
            self.http = AuditHttpServer(self.http_port, QueryEngine(str(store.chdb_path())))

    def _reader(self, alias: str) -> ShardReader:
        return ShardReader(
            shard_map().shards[alias],
            self.sink,
            self.board,
            self.stop,
            slot=self.slot,
            store=self.store_id,
            publication=settings.AUDIT_PUBLICATION,
            tables=list(settings.AUDIT_TABLES),
            batch_max_changes=settings.AUDIT_BATCH_MAX_CHANGES,
            batch_max_seconds=settings.AUDIT_BATCH_MAX_SECONDS,
            stopped_retry_seconds=settings.AUDIT_STOPPED_RETRY_SECONDS,
        )

    def _beat(self) -> None:
        """Every AUDIT_HEARTBEAT_SECONDS, per shard: a heartbeat into its WAL and a look at its slot."""
        while not self.stop.wait(settings.AUDIT_HEARTBEAT_SECONDS):
            for alias, reader in list(self.readers.items()):
                try:
                    with psycopg.connect(conninfo(reader.server, connect_timeout=3), autocommit=True) as conn:
                        # The slot first: the heartbeat's own WAL would show as lag until the next keepalive.
                        mine = [s for s in slot_states(conn) if s.slot == self.slot]
                        emitted = emit_heartbeat(conn, self.slot)
                except (psycopg.Error, ShardMapError) as exc:  # a password file mid-rotation included
                    log.debug("cdc heartbeat to %s failed: %s", alias, exc)
                    continue
                fields: dict[str, Any] = {"heartbeat_emitted_at": emitted, "slot_checked_at": time.time()}
                if mine:
                    fields.update(mine[0].as_status())
                else:
                    fields.update(slot_wal_status=None, slot_retained_bytes=None, slot_safe_wal_bytes=None,
                                  slot_lag_bytes=None)  # fmt: skip
                self.board.update(alias, **fields)

    def follow_new_shards(self) -> list[str]:
        """Start a reader for each shard the map gained since the last look; return their aliases."""
        if not self.follows_map:
            return []
        # The map is read on this thread's connection to the control database: one broken
        # by a restart of that server is replaced rather than kept failing.
        connections["default"].close_if_unusable_or_obsolete()
        current = shard_map()  # re-read at most once a second, when its epoch changed
        added = [alias for alias in current.aliases if alias not in self.readers]
        for alias in added:
            self.board.add_shard(alias)
            reader = self._reader(alias)
            self.readers[alias] = reader
            self.aliases.append(alias)
            reader.start()
            log.info("cdc following %s, added to the shard map at epoch %s", alias, current.epoch)
        return added

    def run(self) -> None:
        """Until `stop` is set: stream, publish status each second; then stop cleanly."""
        if self.http is not None:
            self.http.start()
        for reader in self.readers.values():
            reader.start()
        self.heartbeats.start()
        self.trail_thread.start()
        next_look = time.monotonic() + settings.AUDIT_SHARD_POLL_SECONDS
        try:
            while not self.stop.wait(1.0):
                if time.monotonic() >= next_look:
                    next_look = time.monotonic() + settings.AUDIT_SHARD_POLL_SECONDS
                    try:
                        self.follow_new_shards()
                    except Exception:
                        log.exception("cdc could not look for new shards; trying again later")
                self.board.write()
        finally:
            self.stop.set()
            for reader in self.readers.values():
                reader.join(timeout=15)
            if self.http is not None:
                self.http.shutdown()
                self.http.server_close()
            self.board.stopped = True
            self.board.write()
