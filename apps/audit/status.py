"""The CDC process's status: per shard, position and lag, written to a small JSON file.

`run_cdc` rewrites `<AUDIT_DIR>/cdc_status.json` every second; `manage.py cdc_status` and
`/health` read it, so neither needs to reach into the CDC process (nor open chDB, which
only one process may hold).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings

STALE_AFTER_SECONDS = 10.0


def status_file() -> Path:
    return Path(settings.AUDIT_DIR) / "cdc_status.json"


@dataclass
class ShardStatus:
    shard: str
    connected: bool = False
    snapshot_rows: int | None = None
    server_wal_lsn: int = 0  # the newest WAL position the server reported
    confirmed_lsn: int = 0  # everything before it is in the audit store, confirmed to the slot
    oldest_unwritten_commit: float | None = None  # commit time (epoch s) of the oldest buffered transaction
    last_commit_time: str | None = None
    transactions_written: int = 0
    changes_written: int = 0
    origin_transactions_skipped: int = 0  # a bucket move's copy or clean-up: no money moving
    move_markers: int = 0  # the shard's 'own' markers the reader knows
    stream_epoch: int = 0  # of the last transaction written (apps.audit.epochs)
    reconnects: int = 0
    last_error: str = ""
    disconnected_since: float | None = field(default_factory=time.time)

    def lag(self, now: float) -> tuple[int, float]:
        """(bytes, seconds) the audit store is behind this shard, as far as the reader knows."""
        lag_bytes = max(0, self.server_wal_lsn - self.confirmed_lsn)
        if not self.connected and self.disconnected_since is not None:
            return lag_bytes, round(now - self.disconnected_since, 3)
        if self.oldest_unwritten_commit is None:
            return lag_bytes, 0.0
        return lag_bytes, round(max(0.0, now - self.oldest_unwritten_commit), 3)


class StatusBoard:
    """Thread-safe holder of every shard's status; `write` publishes it atomically."""

    def __init__(self, shards: list[str], backend: str, http_port: int | None) -> None:
        self._lock = threading.Lock()
        self.shards = {alias: ShardStatus(alias) for alias in shards}
        self.backend = backend
        self.http_port = http_port
        self.started_at = time.time()
        self.stopped = False  # set for the last write of a process that stops cleanly

    def add_shard(self, shard: str) -> None:
        """A shard the map gained while the process runs."""
        with self._lock:
            self.shards.setdefault(shard, ShardStatus(shard))

    def update(self, shard: str, **fields: Any) -> None:
        with self._lock:
            status = self.shards[shard]
            for name, value in fields.items():
                setattr(status, name, value)

    def add(self, shard: str, **increments: int) -> None:
        with self._lock:
            status = self.shards[shard]
            for name, value in increments.items():
                setattr(status, name, getattr(status, name) + value)

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            shards = {}
            for alias, status in self.shards.items():
                lag_bytes, lag_seconds = status.lag(now)
                shards[alias] = {**asdict(status), "lag_bytes": lag_bytes, "lag_seconds": lag_seconds}
        return {
            "pid": os.getpid(),
            "backend": self.backend,
            "http_port": self.http_port,
            "started_at": datetime.fromtimestamp(self.started_at, tz=UTC).isoformat(),
            "updated_at": now,
            "stopped": self.stopped,
            "shards": shards,
        }

    def write(self, path: Path | None = None) -> None:
        path = path or status_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=2))
        tmp.replace(path)  # readers never see half a file


def read_status(path: Path | None = None) -> dict[str, Any] | None:
    try:
        return json.loads((path or status_file()).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def running_status() -> dict[str, Any] | None:
    """The status of a CDC process that is running now: fresh, and not the last word of one that stopped."""
    status = read_status()
    if status is None or status.get("stopped") or time.time() - status["updated_at"] > STALE_AFTER_SECONDS:
        return None
    return status


def health_component() -> dict[str, Any]:
    """/health's view of the CDC process: ok when it is fresh, connected to every shard and not behind."""
    status = read_status()
    if status is None:
        return {"ok": False, "error": f"no CDC status at {status_file()}: is run_cdc running?"}
    age = time.time() - status["updated_at"]
    shards = {
        alias: {"connected": s["connected"], "lag_bytes": s["lag_bytes"], "lag_seconds": s["lag_seconds"]}
        for alias, s in status["shards"].items()
    }
    problems = []
    if status.get("stopped"):
        problems.append(f"process {status['pid']} stopped")
    elif age > STALE_AFTER_SECONDS:
        problems.append(f"status not updated for {age:.0f}s (process {status['pid']} gone?)")
    for alias, s in shards.items():
        if not s["connected"]:
            problems.append(f"{alias} not connected")
        elif s["lag_seconds"] > settings.AUDIT_MAX_LAG_SECONDS:
            problems.append(f"{alias} {s['lag_seconds']}s behind")
    component: dict[str, Any] = {"ok": not problems, "shards": shards}
    if problems:
        component["error"] = "; ".join(problems)
    return component
