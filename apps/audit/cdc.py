"""The CDC process: a reader thread per shard, one sink, the status file and (embedded
mode) the auditors' HTTP endpoint. `manage.py run_cdc` runs it until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.conf import settings

from apps.audit import store
from apps.audit.reader import ShardReader
from apps.audit.schema import migrate
from apps.audit.server import AuditHttpServer, QueryEngine
from apps.audit.sink import AuditSink
from apps.audit.status import StatusBoard

log = logging.getLogger(__name__)


class CdcProcess:
    def __init__(self, *, http_port: int | None, shards: list[str] | None = None) -> None:
        self.stop = threading.Event()
        self.aliases = shards or settings.SHARD_MAP.aliases
        self.client: Any = store.writer_client()
        self.applied = migrate(self.client)
        self.sink = AuditSink(self.client)
        self.http_port = http_port if store.embedded() else None
        self.board = StatusBoard(self.aliases, store.backend_name(), self.http_port)
        self.readers = [
            ShardReader(
                settings.SHARD_MAP.shards[alias],
                self.sink,
                self.board,
                self.stop,
                slot=settings.AUDIT_SLOT_NAME,
                publication=settings.AUDIT_PUBLICATION,
                tables=list(settings.AUDIT_TABLES),
                batch_max_changes=settings.AUDIT_BATCH_MAX_CHANGES,
                batch_max_seconds=settings.AUDIT_BATCH_MAX_SECONDS,
            )
            for alias in self.aliases
        ]
        self.http: AuditHttpServer | None = None
        if self.http_port is not None:
            self.http = AuditHttpServer(self.http_port, QueryEngine(str(store.chdb_path())))

    def run(self) -> None:
        """Until `stop` is set: stream, publish status each second; then stop cleanly."""
        if self.http is not None:
            self.http.start()
        for reader in self.readers:
            reader.start()
        try:
            while not self.stop.wait(1.0):
                self.board.write()
        finally:
            self.stop.set()
            for reader in self.readers:
                reader.join(timeout=15)
            if self.http is not None:
                self.http.shutdown()
                self.http.server_close()
            self.board.stopped = True
            self.board.write()
