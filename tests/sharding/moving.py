"""Helpers for tests that move buckets: run a move, put the file's layout back afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings

from apps.ledger.models import Wallet
from apps.ledger.services import wallet_create, wallet_fund
from apps.sharding import moves
from apps.sharding.lease import kernel_state
from apps.sharding.mover import Mover, plan_move
from apps.sharding.moves import Move
from apps.sharding.placement import BUCKET_COLUMNS, range_filter_sql
from apps.sharding.routing import alias_for_id, refresh_shard_map, shard_map
from tests.factories import raw_query


def move(first: int, last: int, target: str, *, stop_after: str | None = None, **options: Any) -> Move:
    options.setdefault("cleanup_delay", 1.2)
    return Mover(plan_move(first, last, target), **options).run(stop_after=stop_after)


def move_under_traffic(
    traffic: Callable[[threading.Event, int], None], first: int, last: int, target: str, *, clients: int = 3
) -> Move:
    """Move the range while `clients` threads run `traffic(stop, seed)` until `stop` is set: from a
    second before the move starts to a second after it ends."""
    stop = threading.Event()
    threads = [threading.Thread(target=traffic, args=(stop, seed)) for seed in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)  # the traffic flows before the move starts
        done = move(first, last, target)
        time.sleep(1.0)  # and after it ends
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return done


def advance_in_flight(aliases: tuple[str, ...] = ("shard_00", "shard_01")) -> None:
    """The saga's remaining steps for every transfer in flight on these shards (when no worker runs)."""
    from apps.transfers.models import Transfer
    from apps.transfers.saga import transfer_advance

    for alias in aliases:
        for transfer in Transfer.objects.using(alias).filter(status__in=["debited", "refunding"]):
            if alias_for_id(transfer.id) == alias:
                transfer_advance(transfer.id)


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
    return run_manage("move_buckets", *args, crash_at=crash_at, timeout=timeout)


def run_manage(
    command: str, *args: str, crash_at: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`manage.py COMMAND ...` on the test stack, as its own process (and process group)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test"}
    env.pop("SHARDWALLET_CRASH_AT", None)
    if crash_at:
        env["SHARDWALLET_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "manage.py", command, *args],
        env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=timeout, start_new_session=True,
    )  # fmt: skip


def map_owner(bucket: int) -> str:
    return refresh_shard_map().alias_for_bucket(bucket) if shard_map() else ""


def start_mover_process(
    *args: str, stop_at: str | None = None, hold_at: str | None = None, marker: Any = None
) -> subprocess.Popen[str]:
    """`manage.py move_buckets ...` running in the background; with `stop_at`, it stops itself
    (SIGSTOP) there; with `hold_at`, it waits there, running, while `marker` exists."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test"}
    env.pop("SHARDWALLET_CRASH_AT", None)
    if stop_at:
        env["SHARDWALLET_STOP_AT"] = f"{stop_at}:{marker}"
    if hold_at:
        env["SHARDWALLET_HOLD_AT"] = f"{hold_at}:{marker}"
    return subprocess.Popen(
        [sys.executable, "manage.py", "move_buckets", *args],
        env=env, cwd=settings.BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def process_state(pid: int) -> str:
    """The kernel's one-letter state of a process ('T': stopped), '' once it is gone."""
    return kernel_state(pid)


def owners_by_bucket(first: int, last: int) -> dict[int, list[str]]:
    """Every shard that says it owns each bucket of the range, read from the shards themselves."""
    owners: dict[int, list[str]] = {b: [] for b in range(first, last + 1)}
    for alias in refresh_shard_map().aliases:
        rows = raw_query(
            alias,
            "SELECT bucket FROM sharding_bucket_owner WHERE bucket BETWEEN %s AND %s AND state = 'owned'",
            [first, last],
        )
        for (bucket,) in rows:
            owners[bucket].append(alias)
    return owners


def assert_at_most_one_owner(first: int, last: int) -> None:
    shared = {b: o for b, o in owners_by_bucket(first, last).items() if len(o) > 1}
    assert not shared, f"buckets owned by two shards: {shared}"


def assert_owned_by(first: int, last: int, alias: str) -> None:
    """Exactly one owner per bucket, `alias`, and the map agrees (outside a switch)."""
    owners = owners_by_bucket(first, last)
    assert {b: o for b, o in owners.items() if o != [alias]} == {}, f"not owned by {alias} alone"
    current = refresh_shard_map()
    assert {current.alias_for_bucket(b) for b in range(first, last + 1)} == {alias}


def move_objects(alias: str) -> list[str]:
    """Publications, slots and subscriptions of moves left on a shard."""
    found = []
    for catalog, column in [("pg_publication", "pubname"), ("pg_replication_slots", "slot_name"),
                            ("pg_subscription", "subname")]:  # fmt: skip
        rows = raw_query(alias, f"SELECT {column} FROM {catalog} WHERE {column} LIKE 'shardwallet_move_%%'")  # noqa: S608
        found += [f"{catalog}:{name}" for (name,) in rows]
    return found


def move_command(*args: str) -> subprocess.CompletedProcess[str]:
    """`move_buckets ...` run in this process (its own connections, so its own lease), as a
    second operator command beside a mover: faster than a process of its own."""
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    out = StringIO()
    try:
        call_command("move_buckets", *args, stdout=out)
    except CommandError as exc:
        return subprocess.CompletedProcess(["move_buckets", *args], 1, out.getvalue(), f"CommandError: {exc}")
    return subprocess.CompletedProcess(["move_buckets", *args], 0, out.getvalue(), "")
