"""A bucket move made by hand, step by step, the way the mover makes it: copy the bucket's
rows to the target under the mover's replication origin, fence the source (with a 'fence'
marker), make the target serve it (with an 'own' marker and a new map epoch), clean up the
source under the origin. `restore_buckets` puts the test stack's placement back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.conf import settings
from psycopg import sql

from apps.audit.pgoutput import str_to_lsn
from apps.audit.reader import conninfo
from apps.sharding.placement import BUCKET_COLUMNS, MOVER_ORIGIN, MOVER_SETTING
from apps.sharding.routing import refresh_shard_map, shard_map
from tests.factories import raw_query


def connect(alias: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo(shard_map().shards[alias]), **kwargs)


@contextmanager
def mover_session(alias: str) -> Iterator[psycopg.Connection[Any]]:
    """A session on `alias` whose transactions carry the mover's origin and pass the fence."""
    with connect(alias, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_replication_origin_create(%s)"
            " WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = %s)",
            [MOVER_ORIGIN, MOVER_ORIGIN],
        )
        conn.execute("SELECT pg_replication_origin_session_setup(%s)", [MOVER_ORIGIN])
        conn.execute(sql.SQL("SET {} = on").format(sql.Identifier(MOVER_SETTING)))
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_replication_origin_session_reset()")


def wal_lsn(alias: str) -> int:
    [(lsn,)] = raw_query(alias, "SELECT pg_current_wal_lsn()::text")
    return str_to_lsn(lsn)


def push_wal_past(alias: str, lsn: int) -> None:
    """Move `alias`'s WAL position beyond `lsn` (a segment switch at a time)."""
    while wal_lsn(alias) <= lsn:
        raw_query(alias, "SELECT pg_logical_emit_message(false, 'shardwallet-test', 'x')")
        raw_query(alias, "SELECT pg_switch_wal()")


def copy_bucket(source: str, target: str, bucket: int) -> dict[str, int]:
    """Copy every row of `bucket` from `source` to `target` in one transaction under the
    mover's origin; return the rows copied per table."""
    copied = {}
    with connect(source, autocommit=True) as src, mover_session(target) as dst, dst.transaction():
        # As a subscription's apply does: no ordinary trigger fires (the outbox's included: the
        # copied events travel as rows, none is written anew).
        dst.execute("SET LOCAL session_replication_role = replica")
        for table, column in BUCKET_COLUMNS.items():
            select = sql.SQL("COPY (SELECT * FROM {} WHERE sharding_bucket({}) = {}) TO STDOUT").format(
                sql.Identifier(table), sql.Identifier(column), sql.Literal(bucket)
            )
            into = dst.cursor()
            with (
                src.cursor().copy(select) as rows,
                into.copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))) as copy,
            ):
                for data in rows:
                    copy.write(data)
            copied[table] = into.rowcount
    return copied


def delete_bucket(alias: str, bucket: int) -> None:
    """The mover's clean-up of a bucket's rows, children first, under its origin."""
    with mover_session(alias) as conn, conn.transaction():
        for table, column in reversed(BUCKET_COLUMNS.items()):
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE sharding_bucket({}) = {}").format(
                    sql.Identifier(table), sql.Identifier(column), sql.Literal(bucket)
                )
            )


def control_epoch() -> int:
    [(epoch,)] = raw_query("default", "SELECT epoch FROM sharding_map_state WHERE id = 1")
    return int(epoch)


def _marker(conn: psycopg.Connection[Any], kind: str, bucket: int, source: str, target: str, epoch: int) -> int:
    row = conn.execute(
        "INSERT INTO sharding_move_marker (move_id, kind, first_bucket, last_bucket, source, target, epoch)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING wal_lsn::text",
        [epoch, kind, bucket, bucket, source, target, epoch],
    ).fetchone()
    assert row is not None
    return str_to_lsn(row[0])


def fence(source: str, target: str, bucket: int, epoch: int) -> None:
    with connect(source, autocommit=True) as conn, conn.transaction():
        conn.execute("UPDATE sharding_bucket_owner SET state = 'fenced', epoch = %s WHERE bucket = %s", [epoch, bucket])
        _marker(conn, "fence", bucket, source, target, epoch)


def own(source: str, target: str, bucket: int, epoch: int) -> int:
    """The target serves `bucket` from `epoch` on, and the control map says so; returns the marker's wal_lsn."""
    with connect(target, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO sharding_bucket_owner (bucket, state, epoch) VALUES (%s, 'owned', %s)"
            " ON CONFLICT (bucket) DO UPDATE SET state = 'owned', epoch = EXCLUDED.epoch, changed_at = now()",
            [bucket, epoch],
        )
        lsn = _marker(conn, "own", bucket, source, target, epoch)
    switch_map({bucket: target}, epoch)
    return lsn


def switch_map(owners: dict[int, str], epoch: int) -> None:
    for bucket, alias in owners.items():
        raw_query("default", "UPDATE sharding_bucket_assignment SET alias = %s WHERE bucket = %s", [alias, bucket])
    raw_query("default", "UPDATE sharding_map_state SET epoch = %s, changed_at = now() WHERE id = 1", [epoch])
    refresh_shard_map()


def move_bucket(source: str, target: str, bucket: int) -> int:
    """Copy, fence, own: the bucket is the target's. Returns the move's epoch."""
    epoch = control_epoch() + 1
    copy_bucket(source, target, bucket)
    fence(source, target, bucket, epoch)
    own(source, target, bucket, epoch)
    return epoch


def restore_buckets(buckets: list[int]) -> None:
    """Each bucket back on its shard of the map file, served there only; no move markers anywhere."""
    for alias in settings.SHARD_MAP.aliases:
        with connect(alias, autocommit=True) as conn, conn.transaction():
            conn.execute(sql.SQL("SET LOCAL {} = on").format(sql.Identifier(MOVER_SETTING)))
            conn.execute("DELETE FROM sharding_move_marker")
            conn.execute("DELETE FROM sharding_bucket_owner WHERE bucket = ANY(%s)", [buckets])
            mine = [b for b in buckets if settings.SHARD_MAP.alias_for_bucket(b) == alias]
            conn.execute(
                "INSERT INTO sharding_bucket_owner (bucket, state, epoch)"
                " SELECT b, 'owned', 1 FROM unnest(%s::int[]) b",
                [mine],
            )
    switch_map({b: settings.SHARD_MAP.alias_for_bucket(b) for b in buckets}, control_epoch() + 1)
