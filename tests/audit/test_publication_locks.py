"""The CDC's change to a shard's publication steps back from a lock a migration holds instead of
deadlocking with it: `shard_add` migrates a shard that the CDC may already follow, and both lock
the captured tables one by one. Real PostgreSQL."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.conf import settings

from apps.audit.reader import PUBLICATION_LOCK_TIMEOUT, captured_tables, conninfo, ensure_publication

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "shard_00"])


def test_the_readers_publication_change_gives_up_at_once_on_a_lock_a_migration_holds() -> None:
    server = settings.SHARD_MAP.shards["shard_00"]
    publication = f"lock_test_{uuid.uuid4().hex[:8]}"
    tables = captured_tables(settings.AUDIT_TABLES)

    def change() -> None:
        ensure_publication(server, publication, tables, lock_timeout=PUBLICATION_LOCK_TIMEOUT)

    try:
        with psycopg.connect(conninfo(server)) as migration, ThreadPoolExecutor(1) as pool:
            # What CREATE TRIGGER takes, held as a migration's transaction holds it.
            migration.execute("LOCK TABLE transfers_idempotency IN SHARE ROW EXCLUSIVE MODE")
            started = time.monotonic()
            attempt = pool.submit(change)
            try:
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    attempt.result(timeout=5)
                assert time.monotonic() - started < 1  # within deadlock_timeout: the reader steps back
            finally:
                migration.rollback()
        change()  # once the lock is free, the publication is made
        with psycopg.connect(conninfo(server), autocommit=True) as conn:
            published = conn.execute(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = %s", [publication]
            ).fetchone()
        assert published == (len(tables),)
    finally:
        with psycopg.connect(conninfo(server), autocommit=True) as conn:
            conn.execute(f'DROP PUBLICATION IF EXISTS "{publication}"')
