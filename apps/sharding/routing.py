"""Where a sharded row lives: computed from its id through the shard map in settings."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from apps.sharding.ids import InvalidId, bucket_of, parse_id
from apps.sharding.mapstore import live_map
from apps.sharding.shardmap import ShardMap

_scoped_shard: ContextVar[str | None] = ContextVar("scoped_shard", default=None)
_operation_map: ContextVar[ShardMap | None] = ContextVar("operation_map", default=None)


def shard_map() -> ShardMap:
    """The map as this process last read it (see apps.sharding.mapstore), or the operation's own copy."""
    pinned = _operation_map.get()
    return pinned if pinned is not None else live_map.get()


def routable_id(raw: object) -> uuid.UUID | None:
    """An id from a URL that this deployment could have issued (a UUIDv7 whose bucket is in the
    map), or None: the caller answers "not found" without asking any shard."""
    try:
        parsed = parse_id(raw)
    except InvalidId:
        return None
    return parsed if bucket_of(parsed) < shard_map().bucket_count else None


def refresh_shard_map() -> ShardMap:
    """Re-read the map now: a shard refused a write for a bucket it no longer serves.

    Inside `one_map()` the operation then follows the new copy: it asked for it, after its
    transaction was refused and rolled back.
    """
    current = live_map.refresh(force=True)
    if _operation_map.get() is not None:
        _operation_map.set(current)
    return current


@contextmanager
def one_map() -> Iterator[ShardMap]:
    """Every routing decision inside the block reads one copy of the map.

    The background refresh (once a second) can change the map between two lookups; an
    operation that locks wallets on one shard and decides where a credit goes from a
    second lookup could then split. Re-entrant: an enclosing block's copy holds.
    """
    pinned = _operation_map.get()
    if pinned is not None:
        yield pinned
        return
    token = _operation_map.set(live_map.get())
    try:
        yield shard_map()
    finally:
        _operation_map.reset(token)


def shard_aliases() -> list[str]:
    return shard_map().aliases


def alias_for_id(row_id: uuid.UUID) -> str:
    """The shard alias holding the row with this id (and every row keyed by it)."""
    return shard_map().alias_for_bucket(bucket_of(row_id))


def random_bucket() -> int:
    return secrets.randbelow(shard_map().bucket_count)


def scoped_shard() -> str | None:
    return _scoped_shard.get()


@contextmanager
def use_shard(alias: str) -> Iterator[str]:
    """Route unqualified queries on sharded models to `alias` inside the block."""
    if alias not in shard_map().shards:
        raise KeyError(f"unknown shard alias {alias!r}")
    token = _scoped_shard.set(alias)
    try:
        yield alias
    finally:
        _scoped_shard.reset(token)
