"""Reads for the operations page: transfers needing attention, the shard map with row counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, connections
from django.db.models import Q
from django.utils import timezone

from apps.common.db import EXACT_COUNT_UP_TO
from apps.sharding.members import MemberState, member_states
from apps.sharding.routing import shard_aliases, shard_map
from apps.transfers.models import IN_FLIGHT_STATUSES, Transfer


@dataclass(frozen=True)
class StuckTransfer:
    transfer: Transfer
    shard: str
    age: timedelta  # since it was created
    idle: timedelta  # since it last changed (status, attempt, re-drive)

    @property
    def parked(self) -> bool:
        return self.transfer.parked_at is not None

    @property
    def age_text(self) -> str:
        return duration_text(self.age)

    @property
    def idle_text(self) -> str:
        return duration_text(self.idle)


def duration_text(duration: timedelta) -> str:
    """3 s, 4 min 10 s, 2 h 5 min, 3 d 4 h: precise enough to triage, short enough for a table."""
    seconds = int(duration.total_seconds())
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if seconds >= size:
            rest = (seconds % size) // smaller_size
            return f"{seconds // size} {unit}" + (f" {rest} {smaller}" if rest else "")
    return f"{seconds} s"


@dataclass
class StuckTransfers:
    rows: list[StuckTransfer]
    unreachable: dict[str, str]  # shard -> error: what we could not look at


def stuck_transfer_list(*, older_than: timedelta, limit_per_shard: int = 200) -> StuckTransfers:
    """Parked transfers and in-flight ones untouched for `older_than`, from every shard, oldest activity first."""
    now = timezone.now()
    cutoff = now - older_than
    rows: list[StuckTransfer] = []
    unreachable: dict[str, str] = {}
    for alias in shard_aliases():
        try:
            transfers = list(
                Transfer.objects.using(alias)
                .filter(Q(parked_at__isnull=False) | Q(updated_at__lt=cutoff), status__in=IN_FLIGHT_STATUSES)
                .extra(where=["sharding_serves(transfers_transfer.id)"])
                .order_by("updated_at")[:limit_per_shard]
            )
        except DatabaseError as exc:
            unreachable[alias] = f"{type(exc).__name__}: {exc}".strip()
            continue
        rows.extend(StuckTransfer(t, alias, now - t.created_at, now - t.updated_at) for t in transfers)
    rows.sort(key=lambda row: row.transfer.updated_at)
    return StuckTransfers(rows, unreachable)


@dataclass(frozen=True)
class ShardInfo:
    alias: str
    endpoint: str
    bucket_ranges: list[tuple[int, int]]
    bucket_count: int
    rows: dict[str, str] | None  # table -> rows as shown ("~N": an estimate); None when unreachable
    error: str = ""
    members: list[MemberState] = field(default_factory=list)  # a replicated cluster's, each as it answers


_COUNTED_TABLES = {
    "wallets": "ledger_wallet",
    "ledger entries": "ledger_entry",
    "transfers": "transfers_transfer",
    "payee outcomes": "transfers_payee_credit",
}


def _row_counts(cursor: Any) -> dict[str, str]:
    """Rows per table: exact for small tables, the planner's statistics (shown as "~N") above
    EXACT_COUNT_UP_TO, so the page costs the same at ten million rows as at ten."""
    cursor.execute(
        "SELECT relname, reltuples::bigint FROM pg_class WHERE relname = ANY(%s) AND relkind = 'r'",
        [list(_COUNTED_TABLES.values())],
    )
    estimates = dict(cursor.fetchall())
    counts = {}
    for label, table in _COUNTED_TABLES.items():
        estimate = estimates.get(table, -1)
        if estimate > EXACT_COUNT_UP_TO:
            counts[label] = f"~{estimate:,}"
        else:
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed names
            counts[label] = f"{cursor.fetchone()[0]:,}"
    return counts


def shard_overview() -> list[ShardInfo]:
    """Each shard's bucket ranges and row counts (large tables by estimate: see `_row_counts`)."""
    infos = []
    for alias in shard_aliases():
        server = shard_map().shards[alias]
        ranges = [(r.first, r.last) for r in shard_map().ranges if r.alias == alias]
        try:
            with connections[alias].cursor() as cursor:
                counts = _row_counts(cursor)
            error = ""
        except DatabaseError as exc:
            counts, error = None, f"{type(exc).__name__}: {exc}".strip()
        infos.append(
            ShardInfo(
                alias=alias,
                endpoint=",".join(f"{host}:{port}" for host, port in server.endpoints) + f"/{server.name}",
                bucket_ranges=ranges,
                bucket_count=sum(last - first + 1 for first, last in ranges),
                rows=counts,
                error=error,
                members=member_states(server),
            )
        )
    return infos
