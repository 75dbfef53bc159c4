"""Read the same facts from the shards and from the audit store, to compare them exactly."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from tests.factories import raw_query


def shard_rows(sql: str) -> set[tuple[Any, ...]]:
    rows: set[tuple[Any, ...]] = set()
    for alias in settings.SHARD_MAP.aliases:
        rows |= {(alias, *row) for row in raw_query(alias, sql)}
    return rows


def shard_entries() -> set[tuple[Any, ...]]:
    return shard_rows("SELECT id, wallet_id, seq, reference, kind, amount_minor, balance_after_minor FROM ledger_entry")


def store_entries(client: Any) -> set[tuple[Any, ...]]:
    return set(
        client.query(
            "SELECT shard, entry_id, wallet_id, entry_seq, reference, kind, amount_minor, balance_after_minor"
            " FROM audit.ledger_entries FINAL WHERE is_deleted = 0"
        ).result_rows
    )


def shard_transitions() -> set[tuple[Any, ...]]:
    return shard_rows("SELECT transfer_id, id, from_status, to_status, reason FROM transfers_event")


def store_transitions(client: Any) -> set[tuple[Any, ...]]:
    return set(
        client.query(
            "SELECT shard, transfer_id, event_id, from_status, to_status, reason"
            " FROM audit.transfer_transitions FINAL WHERE is_deleted = 0"
        ).result_rows
    )


def caught_up(client: Any, *, once: bool = False) -> bool:
    """The store holds exactly the shards' entries and transitions. With `once` (a stream that
    was never interrupted, so nothing was sent twice), each row version is also stored once:
    counted without FINAL, which hides a row written twice until a merge collapses it, so the
    count is asserted (not waited for) as soon as the rows are all there."""
    entries, transitions = shard_entries(), shard_transitions()
    if store_entries(client) != entries or store_transitions(client) != transitions:
        return False
    if once:
        stored = [
            count(client, f"SELECT count() FROM audit.{table} WHERE is_deleted = 0")  # noqa: S608
            for table in ("ledger_entries", "transfer_transitions")
        ]
        assert stored == [len(entries), len(transitions)], f"rows stored more than once: {stored}"
    return True


def count(client: Any, sql: str, parameters: dict[str, Any] | None = None) -> int:
    return int(client.query(sql, parameters=parameters).result_rows[0][0])
