"""A move whose source or target fails over mid-move (its primary killed, its synchronous
standby promoted, as Patroni does): the move resumes or aborts cleanly, each bucket has one
owner at every step, and no money is lost or made.

The replicated shard is a primary and a streaming standby of its own (synchronous: a commit
waits for the standby), in the map as `shard_02` with the standby as its second member.
Real PostgreSQL servers and the real mover.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from apps.sharding import moves
from apps.sharding.devstack import PostgresCluster
from apps.sharding.mapstore import live_map, register_connections, save_server
from apps.sharding.mover import Mover
from apps.sharding.moves import ABORTED, DONE
from apps.sharding.routing import alias_for_id, refresh_shard_map
from apps.sharding.shard_setup import seed_shard
from apps.sharding.shardmap import DatabaseServer
from apps.transfers.checks import check_ledger
from apps.transfers.saga import transfer_advance
from tests.factories import ALL_DATABASES, create_transfer, make_client, raw_query
from tests.factories import wallet_balance as balance
from tests.polling import wait_until
from tests.sharding.moving import (
    assert_at_most_one_owner,
    assert_owned_by,
    move,
    move_objects,
    range_rows,
    restore_file_layout,
    run_mover_process,
    wallet_in_bucket,
)
from tests.sharding.replicas import primary_and_standby

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

REPLICATED = "shard_02"
BUCKET = 7  # a bucket of shard_00 in the test map


@dataclass
class ReplicatedShard:
    primary: PostgresCluster
    standby: PostgresCluster
    server: DatabaseServer

    def fail_over(self) -> None:
        """The primary dies at once; its synchronous standby is promoted."""
        self.primary.stop("immediate")
        self.standby.promote()
        connections[REPLICATED].close()

    def synchronous(self) -> bool:
        with psycopg.connect(self.primary.server.conninfo(), autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone()
        return bool(row and row[0])


def _forget(alias: str) -> None:
    if alias in connections.settings:
        connections[alias].close()
        del connections[alias]
        connections.settings.pop(alias, None)
    settings.DATABASES.pop(alias, None)


@pytest.fixture
def replicated(devstack: Any, django_db_blocker: Any) -> Iterator[ReplicatedShard]:
    """shard_02 as a primary with a synchronous standby, in the map with no bucket; afterwards
    every range back where the map file puts it, and shard_02 gone.

    The test case allows only the databases that existed when it started; the shard added
    during the test is reached through Django's own connection handling, as in production."""
    with primary_and_standby(REPLICATED, "shardwallet", "replicated") as (primary, standby):
        with psycopg.connect(primary.server.conninfo(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("SELECT pg_reload_conf()")
        server = DatabaseServer(
            REPLICATED, "127.0.0.1", primary.server.port, "shardwallet", members=(f"127.0.0.1:{standby.server.port}",)
        )
        shard = ReplicatedShard(primary, standby, server)
        wait_until(shard.synchronous, 20, "the standby to be synchronous")
        try:
            with mock.patch.object(BaseDatabaseWrapper, "ensure_connection", django_db_blocker._real_ensure_connection):
                save_server(server)
                raw_query("default", "UPDATE sharding_map_state SET epoch = epoch + 1")
                current = refresh_shard_map()
                register_connections(current)
                call_command("migrate", database=REPLICATED, interactive=False, verbosity=0)
                seed_shard(REPLICATED, current)
                yield shard
                restore_file_layout()
        finally:
            raw_query("default", "DELETE FROM sharding_move WHERE %s IN (source, target)", [REPLICATED])
            raw_query("default", "DELETE FROM sharding_server WHERE alias = %s", [REPLICATED])
            raw_query("default", "UPDATE sharding_map_state SET epoch = epoch + 1")
            live_map.forget()
            refresh_shard_map()
            _forget(REPLICATED)


def pay(owner: Any, payer: Any, payee: Any, amount: int) -> uuid.UUID:
    done = transfer_advance(create_transfer(owner, payer, payee.id, amount, key=str(uuid.uuid4())).id)
    assert done.status == "completed", done.status
    return done.id


def assert_moved_cleanly(source: str, target: str, wallets: dict[Any, int]) -> None:
    """The bucket is the target's alone, the source holds none of its rows, no move's objects are
    left anywhere, every balance is what the payments make it and the ledger adds up."""
    assert_owned_by(BUCKET, BUCKET, target)
    assert sum(range_rows(source, BUCKET, BUCKET).values()) == 0
    assert move_objects(source) == move_objects(target) == []
    assert {w.id: balance(w.id) for w in wallets} == {w.id: amount for w, amount in wallets.items()}
    assert check_ledger().violations == []


def test_a_move_whose_target_fails_over_goes_on_from_the_promoted_standby(replicated: ReplicatedShard) -> None:
    owner, _ = make_client()
    payer, payee = wallet_in_bucket(owner, BUCKET, funded=1_000), wallet_in_bucket(owner, BUCKET)
    outside = wallet_in_bucket(owner, 700)  # a bucket of shard_01
    pay(owner, payer, payee, 100)
    pay(owner, payer, outside, 50)
    assert alias_for_id(payer.id) == "shard_00"

    move(BUCKET, BUCKET, REPLICATED, stop_after="copying")
    pay(owner, payer, payee, 30)  # streamed to the target, applied on both its members
    replicated.fail_over()
    assert_at_most_one_owner(BUCKET, BUCKET)

    done = Mover(moves.active_move(), cleanup_delay=1.2).run()  # type: ignore[arg-type]
    assert done.state == DONE
    assert "copy_restarts" not in done.detail  # the subscription went on: no second copy
    assert alias_for_id(payer.id) == REPLICATED
    assert_moved_cleanly("shard_00", REPLICATED, {payer: 820, payee: 130, outside: 50})
    pay(owner, payee, payer, 5)  # written on the promoted standby
    assert [balance(payer.id), balance(payee.id)] == [825, 125]


def test_a_move_whose_source_fails_over_while_fenced_copies_again_from_the_promoted_standby(
    replicated: ReplicatedShard, tmp_path: Path
) -> None:
    owner, _ = make_client()
    payer, payee = wallet_in_bucket(owner, BUCKET, funded=1_000), wallet_in_bucket(owner, BUCKET)
    move(BUCKET, BUCKET, REPLICATED)
    pay(owner, payer, payee, 100)

    # The mover dies with the source fenced; then the source's primary dies too. Its promoted
    # standby has the fence (replicated like any row) but not the move's slot.
    marker = tmp_path / "crash"
    marker.touch()
    died = run_mover_process(str(BUCKET), str(BUCKET), "--to", "shard_00", crash_at=f"move_after_fence:{marker}")
    assert died.returncode != 0, died.stdout + died.stderr
    active = moves.active_move()
    assert active is not None
    assert active.phase == "switching"
    replicated.fail_over()
    assert raw_query(REPLICATED, "SELECT state FROM sharding_bucket_owner WHERE bucket = %s", [BUCKET]) == [("fenced",)]
    assert raw_query(REPLICATED, "SELECT slot_name FROM pg_replication_slots") == []
    assert_at_most_one_owner(BUCKET, BUCKET)

    done = Mover(active, cleanup_delay=1.2).run()
    assert done.state == DONE
    [restart] = done.detail["copy_restarts"]
    assert restart["from"] == "switching"
    assert "is gone from shard_02" in restart["reason"]
    assert_moved_cleanly(REPLICATED, "shard_00", {payer: 900, payee: 100})
    pay(owner, payer, payee, 1)
    assert [balance(payer.id), balance(payee.id)] == [899, 101]


def test_a_move_whose_source_failed_over_aborts_cleanly(replicated: ReplicatedShard) -> None:
    owner, _ = make_client()
    payer, payee = wallet_in_bucket(owner, BUCKET, funded=1_000), wallet_in_bucket(owner, BUCKET)
    move(BUCKET, BUCKET, REPLICATED)
    move(BUCKET, BUCKET, "shard_00", stop_after="copying")
    pay(owner, payer, payee, 40)
    replicated.fail_over()

    aborted = Mover(moves.active_move()).abort()  # type: ignore[arg-type]
    assert aborted.state == ABORTED
    assert_moved_cleanly("shard_00", REPLICATED, {payer: 960, payee: 40})
    pay(owner, payer, payee, 10)
    assert [balance(payer.id), balance(payee.id)] == [950, 50]
