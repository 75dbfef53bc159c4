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
    held_changes_peak: int = 0  # the most changes one transaction held in memory until its Commit
    move_markers: int = 0  # the shard's 'own' markers the reader knows
    stream_epoch: int = 0  # of the last transaction written (apps.audit.epochs)
    reconnects: int = 0
    last_error: str = ""
    disconnected_since: float | None = field(default_factory=time.time)
    slot: str = ""
    # Set while the stream waits for an operator (apps.audit.stops): cause, message, where.
    stopped: str | None = None
    stopped_detail: str = ""
    stopped_lsn: str | None = None
    stopped_commit_lsn: str | None = None
    gaps_recorded: int = 0
    truncations: int = 0
    # Heartbeats (epoch seconds): the newest one emitted into the shard's WAL, and the newest
    # one the reader has written and confirmed.
    heartbeat_emitted_at: float | None = None
    heartbeat_confirmed_at: float | None = None
    # The slot as the shard reports it (apps.audit.slots), refreshed with each heartbeat.
    slot_wal_status: str | None = None
    slot_retained_bytes: int | None = None  # WAL the slot keeps the shard from removing
    slot_safe_wal_bytes: int | None = None  # WAL that can still be written before the slot is lost
    slot_lag_bytes: int | None = None  # pg_current_wal_lsn() - the slot's confirmed position
    slot_checked_at: float | None = None

    def lag(self, now: float, heartbeat_seconds: float) -> tuple[int, float]:
        """(bytes, seconds) the audit store is behind this shard.

        Bytes: the shard's current WAL position less the slot's confirmed one, as the shard
        reported it at the last heartbeat (else as far as the stream tells). Seconds: the
        oldest change not yet written, or, if larger, how long the heartbeats have gone
        unconfirmed (a stream that stalls without sending anything still shows its lag)."""
        if self.slot_lag_bytes is not None:
            lag_bytes = self.slot_lag_bytes
        else:
            lag_bytes = max(0, self.server_wal_lsn - self.confirmed_lsn)
        if not self.connected and self.disconnected_since is not None:
            return lag_bytes, round(now - self.disconnected_since, 3)
        seconds = 0.0
        if self.oldest_unwritten_commit is not None:
            seconds = now - self.oldest_unwritten_commit
        emitted, confirmed = self.heartbeat_emitted_at, self.heartbeat_confirmed_at
        if emitted is not None and (confirmed is None or confirmed < emitted):
            since = confirmed if confirmed is not None else emitted - heartbeat_seconds
            seconds = max(seconds, now - since - heartbeat_seconds)
        return lag_bytes, round(max(0.0, seconds), 3)


class StatusBoard:
    """Thread-safe holder of every shard's status; `write` publishes it atomically."""

    def __init__(self, shards: list[str], backend: str, http_port: int | None) -> None:
        self._lock = threading.Lock()
        self.shards = {alias: ShardStatus(alias) for alias in shards}
        self.backend = backend
        self.http_port = http_port
        self.started_at = time.time()
        self.stopped = False  # set for the last write of a process that stops cleanly
        self.store_id = ""
        self.slot = ""  # the slot this store reads on every shard

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
                lag_bytes, lag_seconds = status.lag(now, settings.AUDIT_HEARTBEAT_SECONDS)
                shards[alias] = {**asdict(status), "lag_bytes": lag_bytes, "lag_seconds": lag_seconds}
        return {
            "pid": os.getpid(),
            "backend": self.backend,
            "http_port": self.http_port,
            "started_at": datetime.fromtimestamp(self.started_at, tz=UTC).isoformat(),
            "updated_at": now,
            "stopped": self.stopped,
            "store_id": self.store_id,
            "slot": self.slot,
            "heartbeat_seconds": settings.AUDIT_HEARTBEAT_SECONDS,
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


def shard_problems(alias: str, shard: dict[str, Any]) -> list[str]:
    """What is wrong with one shard's stream, in words, from its entry in the status file."""
    problems = []
    if shard.get("stopped"):
        problems.append(f"{alias} stream STOPPED ({shard['stopped']}): {shard.get('stopped_detail', '')}")
    elif not shard["connected"]:
        problems.append(f"{alias} not connected")
    elif shard["lag_seconds"] > settings.AUDIT_MAX_LAG_SECONDS:
        problems.append(f"{alias} {shard['lag_seconds']}s behind")
    if shard.get("slot_wal_status") in ("unreserved", "lost"):
        problems.append(f"{alias} slot {shard.get('slot')} is {shard['slot_wal_status']} (past max_slot_wal_keep_size)")
    retained = shard.get("slot_retained_bytes")
    if retained is not None and retained > settings.AUDIT_MAX_RETAINED_BYTES:
        problems.append(f"{alias} slot holds {retained} bytes of WAL (more than {settings.AUDIT_MAX_RETAINED_BYTES})")
    return problems


def health_component() -> dict[str, Any]:
    """/health's view of the CDC process: ok when it is fresh, connected to every shard and not behind."""
    status = read_status()
    if status is None:
        return {"ok": False, "error": f"no CDC status at {status_file()}: is run_cdc running?"}
    age = time.time() - status["updated_at"]
    keys = ("connected", "lag_bytes", "lag_seconds", "stopped", "slot_wal_status", "slot_retained_bytes")
    shards = {alias: {key: s.get(key) for key in keys} for alias, s in status["shards"].items()}
    problems = []
    if status.get("stopped"):
        problems.append(f"process {status['pid']} stopped")
    elif age > STALE_AFTER_SECONDS:
        problems.append(f"status not updated for {age:.0f}s (process {status['pid']} gone?)")
    for alias, s in status["shards"].items():
        problems += shard_problems(alias, s)
    component: dict[str, Any] = {"ok": not problems, "shards": shards}
    if problems:
        component["error"] = "; ".join(problems)
    return component
