"""The authoritative shard map on the control database, and the copy each process follows.

`shards.yaml` declares the servers and the initial layout; `migrate_shards` seeds the
control database from it once. From then on the control database says which shard owns
each bucket, with an epoch that every move bumps. Each process re-reads the epoch at most
once a second (and at once when a shard refused a write), loading the map when it changed.

A stale copy is harmless for writes: each shard refuses, inside the writing transaction,
a row of a bucket it does not serve (the fence, ledger migration 0006). The caller then
reloads the map and retries on the owner. Reads through a stale copy can see the old
owner's frozen rows for at most the refresh interval; moves clean up later than that.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, transaction

from apps.sharding.shardmap import SERVERS_SQL, DatabaseServer, ShardMap

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0
FIRST_READ_RETRY_SECONDS = 0.1


def _default_cursor() -> Any:
    return connections["default"].cursor()


def seed_control_map(base: ShardMap) -> bool:
    """Write the file's servers and layout to the control database unless it holds a map already.

    Servers the file declares later (for `shard_add`) are added by that command, not here.
    """
    with _default_cursor() as cursor:
        cursor.execute("SELECT 1 FROM sharding_map_state")
        if cursor.fetchone():
            return False
        for server in base.shards.values():
            save_server(server, cursor)
        cursor.execute(
            "INSERT INTO sharding_bucket_assignment (bucket, alias) SELECT b, (%s::text[])[b + 1]"
            " FROM generate_series(0, %s - 1) b",
            [list(base._alias_by_bucket), base.bucket_count],
        )
        cursor.execute(
            "INSERT INTO sharding_map_state (id, epoch, bucket_count) VALUES (1, 1, %s) ON CONFLICT DO NOTHING",
            [base.bucket_count],
        )
    return True


def save_server(server: DatabaseServer, cursor: Any | None = None) -> None:
    sql = (
        "INSERT INTO sharding_server (alias, host, port, name, username, password, members)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (alias) DO NOTHING"
    )
    values = [server.alias, server.host, server.port, server.name, server.user, server.password, list(server.members)]
    if cursor is not None:
        cursor.execute(sql, values)
        return
    with _default_cursor() as own:
        own.execute(sql, values)


def read_epoch() -> int | None:
    with _default_cursor() as cursor:
        cursor.execute("SELECT epoch FROM sharding_map_state WHERE id = 1")
        row = cursor.fetchone()
    return int(row[0]) if row else None


def read_control_map(base: ShardMap) -> ShardMap | None:
    """The control database's map (servers it knows beyond the file's included), or None before seeding."""
    with _default_cursor() as cursor:
        cursor.execute("SELECT epoch, bucket_count FROM sharding_map_state WHERE id = 1")
        state = cursor.fetchone()
        if state is None:
            return None
        cursor.execute(SERVERS_SQL)
        servers = {row[0]: DatabaseServer.from_row(row) for row in cursor.fetchall()}
        cursor.execute("SELECT alias FROM sharding_bucket_assignment ORDER BY bucket")
        owners = [row[0] for row in cursor.fetchall()]
    # The file's entries win for servers it declares (their passwords stay in the file).
    servers.update(base.shards)
    return base.with_owners(servers, owners, int(state[0]))


def register_connections(shard_map: ShardMap) -> None:
    """Make every shard of the map usable as a database alias, in this process, without a restart."""
    for alias, server in shard_map.shards.items():
        if alias in connections.settings:
            continue
        configured = connections.configure_settings(
            {"default": connections.settings["default"], alias: server.django_settings()}
        )
        connections.settings[alias] = configured[alias]
        settings.DATABASES[alias] = configured[alias]
        log.info("shard %s added to this process", alias)


class LiveMap:
    """The map this process routes by: the file's until the control database has one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._map: ShardMap | None = None
        self._checked_at = float("-inf")

    def _interval(self) -> float:
        # A process that has not read the control database's map yet routes by the file's
        # layout, which may be many moves old: it asks again soon rather than in a second.
        return REFRESH_SECONDS if self._map is not None else FIRST_READ_RETRY_SECONDS

    def get(self) -> ShardMap:
        if time.monotonic() - self._checked_at >= self._interval():
            # Once a map is in hand, no request waits for another thread's read: with the
            # control database unreachable each read takes its connect timeout, and every
            # request would queue behind it (the shards' fences keep a stale copy safe).
            self.refresh(wait=self._map is None)
        return self._map or settings.SHARD_MAP

    def refresh(self, *, force: bool = False, wait: bool = True) -> ShardMap:
        if not self._lock.acquire(blocking=wait):
            return self._map or settings.SHARD_MAP  # another thread is reading it
        try:
            return self._refresh(force)
        finally:
            self._lock.release()

    def _refresh(self, force: bool) -> ShardMap:
        if not force and time.monotonic() - self._checked_at < self._interval():
            return self._map or settings.SHARD_MAP
        self._checked_at = time.monotonic()
        current = self._map or settings.SHARD_MAP
        try:
            # A savepoint when the caller is inside a transaction: a failed read (the
            # tables not migrated yet) must not break the caller's transaction.
            with transaction.atomic(using="default"):
                epoch = read_epoch()
                changed = epoch is not None and epoch != current.epoch
                loaded = read_control_map(settings.SHARD_MAP) if changed else None
            if loaded is not None:
                register_connections(loaded)
                if self._map is not None:
                    log.info("shard map epoch %s -> %s", current.epoch, loaded.epoch)
                self._map = loaded
        except DatabaseError as exc:
            # Control database unreachable (or not migrated yet): keep routing by the copy in
            # hand. The shards' fences keep a stale copy from writing anywhere wrong.
            log.warning("shard map not refreshed, routing by epoch %s: %s", current.epoch, exc)
        except RuntimeError as exc:  # no database access at all here (a test without one)
            log.debug("shard map not refreshed: %s", exc)
        return self._map or settings.SHARD_MAP

    def forget(self) -> None:
        """Drop the copy (tests that rewrite the control map)."""
        with self._lock:
            self._map = None
            self._checked_at = float("-inf")


live_map = LiveMap()
