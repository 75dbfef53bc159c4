"""Helpers for tests that move buckets: run a move, put the file's layout back afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

from django.conf import settings

from apps.ledger.models import Wallet
from apps.ledger.services import wallet_create, wallet_fund
from apps.sharding import moves
from apps.sharding.mover import Mover, plan_move
from apps.sharding.moves import Move
from apps.sharding.placement import BUCKET_COLUMNS, range_filter_sql
from apps.sharding.routing import refresh_shard_map, shard_map
from tests.factories import raw_query


def move(first: int, last: int, target: str, *, stop_after: str | None = None, **options: Any) -> Move:
    options.setdefault("cleanup_delay", 1.2)
    return Mover(plan_move(first, last, target), **options).run(stop_after=stop_after)


def restore_file_layout() -> None:
    """Abort a move left active, then move every range back where the shard map file puts it."""
    active = moves.active_move()
    if active is not None:
        try:
            Mover(active).abort()
        except moves.MoveConflict:
            Mover(active, cleanup_delay=1.2).run()
    current = refresh_shard_map()
    for r in settings.SHARD_MAP.ranges:
        for b in range(r.first, r.last + 1):
            if current.alias_for_bucket(b) != r.alias:
                last = b
                while last + 1 <= r.last and current.alias_for_bucket(last + 1) == current.alias_for_bucket(b):
                    last += 1
                move(b, last, r.alias)
                return restore_file_layout()
    return None


def wallet_in_bucket(owner: Any, bucket: int, *, funded: int = 0, currency: str = "USD") -> Wallet:
    wallet = wallet_create(owner_id=owner.id, currency=currency, bucket=bucket)
    if funded:
        wallet_fund(wallet_id=wallet.id, amount_minor=funded, reference=f"seed-{uuid.uuid4()}")
    return wallet


def range_rows(alias: str, first: int, last: int) -> dict[str, int]:
    return {
        table: raw_query(alias, f"SELECT count(*) FROM {table} WHERE {range_filter_sql(table, first, last)}")[0][0]  # noqa: S608
        for table in BUCKET_COLUMNS
    }


def owner_states(alias: str, first: int, last: int) -> set[str]:
    rows = raw_query(
        alias, "SELECT DISTINCT state FROM sharding_bucket_owner WHERE bucket BETWEEN %s AND %s", [first, last]
    )
    return {state for (state,) in rows}


def run_mover_process(
    *args: str, crash_at: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`manage.py move_buckets ...` as its own process (and process group, for crash points)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test"}
    env.pop("SHARDWALLET_CRASH_AT", None)
    if crash_at:
        env["SHARDWALLET_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "manage.py", "move_buckets", *args],
        env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=timeout, start_new_session=True,
    )  # fmt: skip


def map_owner(bucket: int) -> str:
    return refresh_shard_map().alias_for_bucket(bucket) if shard_map() else ""
