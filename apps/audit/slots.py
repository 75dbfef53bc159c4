"""The audit stores' replication slots as each shard reports them: how much WAL each
holds back, how much more may be written before it is lost, and how far its confirmed
position trails the shard's WAL.

Read by the CDC process (with each heartbeat, into its status file) and straight from
the shards by /metrics and `cdc_status`, so a slot filling the disk shows even when no
CDC process runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

# Every slot an audit store registered on the shard (apps.audit.stream_state).
_SLOTS_SQL = """
SELECT s.slot_name, r.store_id::text, s.active, s.wal_status,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
       s.safe_wal_size,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint
  FROM pg_replication_slots s JOIN shardwallet_cdc_slot r USING (slot_name)
 WHERE s.slot_type = 'logical'
 ORDER BY s.slot_name
"""


@dataclass(frozen=True)
class SlotState:
    slot: str
    store_id: str
    active: bool
    wal_status: str | None  # reserved | extended | unreserved | lost
    retained_bytes: int | None  # WAL the shard keeps for this slot
    safe_wal_bytes: int | None  # WAL that may still be written before the slot is lost (None: no cap)
    lag_bytes: int | None  # the shard's WAL position less the slot's confirmed one

    def as_status(self) -> dict[str, Any]:
        return {
            "slot_wal_status": self.wal_status,
            "slot_retained_bytes": self.retained_bytes,
            "slot_safe_wal_bytes": self.safe_wal_bytes,
            "slot_lag_bytes": self.lag_bytes,
        }


def slot_states(conn: psycopg.Connection[Any]) -> list[SlotState]:
    """The shard's audit slots; none if no store ever registered one there."""
    registered = conn.execute("SELECT to_regclass('shardwallet_cdc_slot') IS NOT NULL").fetchone()
    if not registered or not registered[0]:
        return []
    return [SlotState(*row) for row in conn.execute(_SLOTS_SQL).fetchall()]
