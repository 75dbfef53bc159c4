"""`audit.query_log`: every query an auditor sent to the embedded endpoint, kept in the store.

The endpoint records a row per query (who, from where, the text and parameters, when, how
long, rows returned, the error if any); one thread inserts them in small batches, at most
every `AUDIT_QUERY_LOG_FLUSH_SECONDS`, on a chDB connection of its own: the CDC's batches
never wait behind it, nor it behind them. A row is buffered until its insert returned; when
the store keeps refusing and `AUDIT_QUERY_LOG_MAX_PENDING` rows wait, the endpoint refuses
queries instead of running them unlogged. Stopping flushes what is buffered.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import astuple, dataclass, field, fields
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

BATCH_ROWS = 1000


@dataclass
class QueryLogEntry:
    """One row of audit.query_log (migration 0004); field order is the column order."""

    time: datetime
    query_id: str
    auditor: str
    client_address: str
    query: str
    parameters: dict[str, str] = field(default_factory=dict)
    format: str = ""
    duration_ms: int = 0
    result_rows: int = 0
    result_bytes: int = 0
    read_rows: int = 0
    error_code: int = 0
    error: str = ""


COLUMNS = [f.name for f in fields(QueryLogEntry)]


class QueryLog:
    """A buffer of entries and the one thread that inserts them."""

    def __init__(
        self,
        client_factory: Callable[[], Any],
        *,
        flush_seconds: float,
        max_pending: int,
        table: str = "audit.query_log",
    ) -> None:
        self._client_factory = client_factory
        self._client: Any = None
        self.flush_seconds = flush_seconds
        self.max_pending = max_pending
        self.table = table
        self._pending: deque[QueryLogEntry] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.rows_written = 0

    def full(self) -> bool:
        """Too many rows the store has not taken yet: refuse queries until it does."""
        with self._lock:
            return len(self._pending) >= self.max_pending

    def record(self, entry: QueryLogEntry) -> None:
        with self._lock:
            self._pending.append(entry)
            if len(self._pending) >= BATCH_ROWS:
                self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-query-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop the thread after a last flush."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        if self._client is not None:
            self._client.close()
            self._client = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()
        self.flush()

    def flush(self) -> int:
        """Insert what is buffered, a batch at a time; on a failure keep the rest for the next round."""
        written = 0
        while True:
            with self._lock:
                batch = [self._pending[i] for i in range(min(BATCH_ROWS, len(self._pending)))]
            if not batch:
                return written
            try:
                if self._client is None:
                    self._client = self._client_factory()
                self._client.insert(self.table, [list(astuple(e)) for e in batch], column_names=COLUMNS)
            except Exception:
                log.exception("audit query log: insert failed; %d row(s) kept for the next try", self.pending())
                return written
            with self._lock:
                for _ in batch:
                    self._pending.popleft()
            written += len(batch)
            self.rows_written += len(batch)
