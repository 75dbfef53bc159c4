from __future__ import annotations

import json
import time
from typing import Any

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.reader import conninfo
from apps.audit.status import STALE_AFTER_SECONDS, read_status, status_file
from apps.sharding.routing import shard_map


def slot_lag(alias: str) -> dict[str, Any]:
    """What the shard itself says: how far its slot's confirmed position trails its WAL."""
    try:
        with psycopg.connect(conninfo(shard_map().shards[alias]), autocommit=True) as conn:
            row = conn.execute(
                "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
                " FROM pg_replication_slots WHERE slot_name = %s",
                [settings.AUDIT_SLOT_NAME],
            ).fetchone()
    except psycopg.Error as exc:
        return {"error": str(exc).strip()[:200]}
    if row is None:
        return {"slot": "missing"}
    return {"slot_active": row[0], "slot_lag_bytes": row[1]}


class Command(BaseCommand):
    help = "Show the CDC process's position and lag per shard (bytes and seconds), and each slot's lag."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", dest="as_json", help="print JSON")

    def handle(self, *args: Any, as_json: bool, **options: Any) -> None:
        status = read_status()
        # The map's shards (one added since the CDC process started included), and any the
        # process follows that the map no longer lists.
        aliases = sorted(set(shard_map().aliases) | set((status or {}).get("shards", {})))
        slots = {alias: slot_lag(alias) if alias in shard_map().shards else {"slot": "not in the map"}
                 for alias in aliases}  # fmt: skip
        if as_json:
            self.stdout.write(json.dumps({"cdc": status, "slots": slots}, indent=2, default=str))
            return
        if status is None:
            self.stdout.write(f"cdc: no status file at {status_file()} (run_cdc has not run here)")
        else:
            age = time.time() - status["updated_at"]
            state = "running" if age <= STALE_AFTER_SECONDS else f"NOT RUNNING (status {age:.0f}s old)"
            where = f", SQL on http://127.0.0.1:{status['http_port']}" if status.get("http_port") else ""
            self.stdout.write(f"cdc: {state}, pid {status['pid']}, backend {status['backend']}{where}")
        for alias in aliases:
            shard = (status or {}).get("shards", {}).get(alias)
            line = f"  {alias}: "
            if shard:
                line += (
                    f"{'connected' if shard['connected'] else 'DISCONNECTED'}, lag {shard['lag_bytes']} bytes "
                    f"{shard['lag_seconds']} s, {shard['transactions_written']} transactions / "
                    f"{shard['changes_written']} changes written, last commit {shard['last_commit_time']}, "
                    f"stream epoch {shard.get('stream_epoch', 0)}, "
                    f"{shard.get('origin_transactions_skipped', 0)} replicated transactions skipped, "
                    f"reconnects {shard['reconnects']}"
                )
                if shard["last_error"]:
                    line += f", last error: {shard['last_error']}"
            slot = slots[alias]
            line += f"; slot: {slot}"
            self.stdout.write(line)
        if status is None:
            raise CommandError("cdc is not running")
