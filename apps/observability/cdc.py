"""The change-data-capture lag per shard, for /metrics and the operations page.

The CDC process (`run_cdc`) publishes its status file every second (apps.audit.status);
this reads it, so every process sees the lag without reaching into the CDC process. No
file, one not refreshed for a while, or the last word of a process that stopped means the
CDC is not running: then there is no
lag to show (rather than a made-up zero) and the page says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from apps.audit.status import running_status


@dataclass(frozen=True)
class ShardLag:
    seconds: float
    bytes: int
    connected: bool
    stopped: str | None = None  # why the stream waits for an operator (apps.audit.stops)
    stopped_detail: str = ""
    retained_bytes: int | None = None  # WAL the shard keeps for the slot
    wal_status: str | None = None  # the slot's: reserved, extended, unreserved, lost


def cdc_lag() -> dict[str, ShardLag] | None:
    """Lag per shard from a CDC process that is running, else None."""
    status = running_status()
    if status is None:
        return None
    return {
        alias: ShardLag(
            shard["lag_seconds"],
            shard["lag_bytes"],
            shard["connected"],
            shard.get("stopped"),
            shard.get("stopped_detail", ""),
            shard.get("slot_retained_bytes"),
            shard.get("slot_wal_status"),
        )
        for alias, shard in sorted(status["shards"].items())
    }
