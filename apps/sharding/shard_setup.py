"""What each shard database knows of the map: its own alias, the buckets it serves, its id ranges."""

from __future__ import annotations

from django.db import connections

from apps.sharding.placement import SEQUENCE_RANGE_BITS, SERIAL_SEQUENCES
from apps.sharding.shardmap import ShardMap


class ShardIdentityError(RuntimeError):
    """A shard database says it is another shard of the map: the map points at the wrong server."""


def shard_number(alias: str) -> int:
    return int(alias.split("_", 1)[1])


def seed_shard(alias: str, shard_map: ShardMap) -> bool:
    """On a shard's first migration: record its alias, the buckets it serves and its id range.

    Later runs only check the alias: the buckets a shard serves change by moves alone.
    """
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT alias FROM sharding_shard_identity")
        row = cursor.fetchone()
        if row is not None:
            if row[0] != alias:
                raise ShardIdentityError(f"the database of {alias} says it is {row[0]}: check the shard map")
            return False
        cursor.execute("INSERT INTO sharding_shard_identity (alias) VALUES (%s)", [alias])
        cursor.execute(
            "INSERT INTO sharding_bucket_owner (bucket, state, epoch) SELECT b, 'owned', %s FROM unnest(%s::int[]) b",
            [shard_map.epoch, shard_map.buckets_of(alias)],
        )
        floor = shard_number(alias) << SEQUENCE_RANGE_BITS
        if floor:
            for sequence in SERIAL_SEQUENCES:
                cursor.execute(
                    f"SELECT setval('{sequence}', GREATEST((SELECT last_value FROM {sequence}), %s))",  # noqa: S608
                    [floor],
                )
    return True
