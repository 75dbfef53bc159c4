from __future__ import annotations

import json
import time
from typing import Any

import psycopg
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.reader import conninfo
from apps.audit.slots import slot_states
from apps.audit.status import STALE_AFTER_SECONDS, read_status, shard_problems, status_file
from apps.sharding.routing import shard_map


def shard_slots(alias: str) -> list[dict[str, Any]] | dict[str, str]:
    """What the shard itself says about every audit store's slot on it."""
    try:
        with psycopg.connect(conninfo(shard_map().shards[alias], connect_timeout=3), autocommit=True) as conn:
            return [vars(state) for state in slot_states(conn)]
    except psycopg.Error as exc:
        return {"error": str(exc).strip()[:200]}


class Command(BaseCommand):
    help = (
        "Show the CDC process's position and lag per shard (bytes and seconds), any stopped stream and why, "
        "and every audit slot as the shards report it (WAL held, WAL left before it is lost)."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", dest="as_json", help="print JSON")

    def handle(self, *args: Any, as_json: bool, **options: Any) -> None:
        status = read_status()
        # The map's shards (one added since the CDC process started included), and any the
        # process follows that the map no longer lists.
        aliases = sorted(set(shard_map().aliases) | set((status or {}).get("shards", {})))
        slots = {alias: shard_slots(alias) if alias in shard_map().shards else {"error": "not in the map"}
                 for alias in aliases}  # fmt: skip
        if as_json:
            self.stdout.write(json.dumps({"cdc": status, "slots": slots}, indent=2, default=str))
            return
        problems: list[str] = []
        if status is None:
            self.stdout.write(f"cdc: no status file at {status_file()} (run_cdc has not run here)")
        else:
            age = time.time() - status["updated_at"]
            state = "running" if age <= STALE_AFTER_SECONDS else f"NOT RUNNING (status {age:.0f}s old)"
            where = f", SQL on http://127.0.0.1:{status['http_port']}" if status.get("http_port") else ""
            self.stdout.write(
                f"cdc: {state}, pid {status['pid']}, backend {status['backend']}{where}, store"
                f" {status.get('store_id')}, slot {status.get('slot')}"
            )
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
                    f"at most {shard.get('held_changes_peak', 0)} changes held for one transaction, "
                    f"{shard.get('gaps_recorded', 0)} gaps recorded, {shard.get('truncations', 0)} truncations, "
                    f"reconnects {shard['reconnects']}"
                )
                if shard.get("stopped"):
                    line += f"\n    STOPPED ({shard['stopped']}): {shard.get('stopped_detail')}"
                    if shard.get("stopped_commit_lsn"):
                        line += f"\n    failing transaction committed at {shard['stopped_commit_lsn']}"
                elif shard["last_error"]:
                    line += f", last error: {shard['last_error']}"
                problems += shard_problems(alias, shard)
            self.stdout.write(line)
            found = slots[alias]
            if isinstance(found, dict):
                self.stdout.write(f"    slots: {found['error']}")
                continue
            for slot in found:
                self.stdout.write(
                    f"    slot {slot['slot']} (store {slot['store_id']}): {'active' if slot['active'] else 'inactive'},"
                    f" wal_status {slot['wal_status']}, holds {slot['retained_bytes']} bytes, confirmed"
                    f" {slot['lag_bytes']} bytes behind, {slot['safe_wal_bytes']} bytes left before it is lost"
                )
        if status is None:
            raise CommandError("cdc is not running")
        if problems:
            raise CommandError("; ".join(problems))
