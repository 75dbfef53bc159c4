"""A shard as a replicated cluster: the map lists its members, and every connection takes the one
that accepts writes, so a promoted standby is found by the next connection without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg2
import psycopg2.extras
import pytest
from django.conf import settings
from django.db import connections
from django.db.utils import load_backend

from apps.sharding.devstack import PostgresCluster
from apps.sharding.mapstore import read_control_map, save_server
from apps.sharding.members import member_states
from apps.sharding.shardmap import DatabaseServer, ShardMapError, parse_shard_map
from tests.polling import wait_until
from tests.sharding.replicas import primary_and_standby
from tests.sharding.test_shardmap import valid_map

pytestmark = pytest.mark.slow

WHERE_AM_I = "SELECT pg_is_in_recovery(), current_setting('port')::int"


@dataclass
class Pair:
    primary: PostgresCluster
    standby: PostgresCluster
    # The standby listed first: only target_session_attrs makes a connection skip it.
    server: DatabaseServer


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A primary and its streaming standby, each a server of its own on a free port."""
    with primary_and_standby("shard_98", "members", "cluster") as (primary, standby):
        server = DatabaseServer(
            "shard_98", "127.0.0.1", standby.server.port, "members", members=(f"127.0.0.1:{primary.server.port}",)
        )
        yield Pair(primary, standby, server)


def _django_connection(server: DatabaseServer) -> Any:
    """A Django connection built from the server's settings, as the shards' are."""
    configured = connections.configure_settings(
        {"default": settings.DATABASES["default"], "members": server.django_settings()}
    )
    return load_backend(configured["members"]["ENGINE"]).DatabaseWrapper(configured["members"], "members")


def _replication_port(server: DatabaseServer) -> int:
    """The port the CDC's kind of connection (logical replication, psycopg2) lands on."""
    conn = psycopg2.connect(server.conninfo(), connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        conn.cursor().execute("IDENTIFY_SYSTEM")
        return int(conn.info.port)
    finally:
        conn.close()


def _replayed(standby: DatabaseServer, lsn: str) -> bool:
    with psycopg.connect(standby.conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone()
    return bool(row and row[0])


def test_connections_take_the_writable_member_and_follow_a_promotion(pair: Pair, django_db_blocker: Any) -> None:
    primary_port, standby_port = pair.primary.server.port, pair.standby.server.port
    with psycopg.connect(pair.server.conninfo(), autocommit=True) as conn:
        assert conn.execute(WHERE_AM_I).fetchone() == (False, primary_port)
        conn.execute("CREATE TABLE paid (amount bigint)")
        conn.execute("INSERT INTO paid VALUES (100)")
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
    django_conn = _django_connection(pair.server)
    with django_db_blocker.unblock(), django_conn.cursor() as cursor:
        cursor.execute(WHERE_AM_I)
        assert cursor.fetchone() == (False, primary_port)
    assert _replication_port(pair.server) == primary_port
    wait_until(lambda: _replayed(pair.standby.server, lsn), 20, "the standby to replay the payment")

    # The primary dies; the standby is promoted (what Patroni does). Same map, same settings.
    pair.primary.stop("immediate")
    pair.standby.promote()
    with psycopg.connect(pair.server.conninfo(), autocommit=True) as conn:
        assert conn.execute(WHERE_AM_I).fetchone() == (False, standby_port)
        assert conn.execute("SELECT sum(amount) FROM paid").fetchone() == (100,)
        conn.execute("INSERT INTO paid VALUES (50)")
    assert _replication_port(pair.server) == standby_port
    # A Django connection that held the dead primary fails its next query; its replacement
    # (what a request's 503 and the next request do) finds the new primary.
    with django_db_blocker.unblock():
        with pytest.raises(Exception, match=r"terminat|closed|connection"), django_conn.cursor() as cursor:
            cursor.execute(WHERE_AM_I)
        django_conn.close()
        with django_conn.cursor() as cursor:
            cursor.execute(WHERE_AM_I)
            assert cursor.fetchone() == (False, standby_port)
            cursor.execute("SELECT sum(amount) FROM paid")
            assert cursor.fetchone() == (150,)
        django_conn.close()


def test_a_single_server_is_used_whatever_it_is(pair: Pair) -> None:
    """No members: no target_session_attrs, so a read-only standby is still connected to (a
    deployment that lists one server has said which)."""
    alone = DatabaseServer("shard_98", "127.0.0.1", pair.standby.server.port, "members")
    assert "target_session_attrs" not in alone.conninfo()
    assert "target_session_attrs" not in alone.django_settings()["OPTIONS"]
    with psycopg.connect(alone.conninfo(), autocommit=True) as conn:
        assert conn.execute(WHERE_AM_I).fetchone() == (True, pair.standby.server.port)


def test_the_map_takes_members_as_host_port_strings() -> None:
    data = valid_map()
    data["shards"][0]["members"] = ["10.0.0.2:5432", "db-c.internal:6432"]
    shard = parse_shard_map(data).shards["shard_00"]
    assert shard.endpoints == [("127.0.0.1", 5001), ("10.0.0.2", 5432), ("db-c.internal", 6432)]
    assert "host='127.0.0.1,10.0.0.2,db-c.internal' port='5001,5432,6432'" in shard.conninfo()
    assert "target_session_attrs='read-write'" in shard.conninfo()
    django = shard.django_settings()
    assert (django["HOST"], django["PORT"]) == ("127.0.0.1,10.0.0.2,db-c.internal", "5001,5432,6432")
    for bad in (["10.0.0.2"], "10.0.0.2:5432", ["10.0.0.2:port"], ["a,b:5432"], [5432]):
        data["shards"][0]["members"] = bad
        with pytest.raises(ShardMapError, match=r"shard_00.*members must be a list"):
            parse_shard_map(data)


@pytest.mark.django_db(transaction=True, databases=["default"])
def test_a_servers_members_are_kept_by_the_control_database() -> None:
    """A shard added with shard_add --member: every process reads its members from the control database."""
    added = DatabaseServer("shard_97", "10.0.0.7", 5432, "shardwallet", members=("10.0.0.8:5432", "10.0.0.9:5433"))
    save_server(added)
    try:
        known = read_control_map(settings.SHARD_MAP)
        assert known is not None
        assert known.shards["shard_97"].members == added.members
        assert known.shards["shard_97"].endpoints == [("10.0.0.7", 5432), ("10.0.0.8", 5432), ("10.0.0.9", 5433)]
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute("DELETE FROM sharding_server WHERE alias = 'shard_97'")


def test_each_member_says_what_it_is_for_the_operations_page(pair: Pair) -> None:
    standby, primary = f"127.0.0.1:{pair.standby.server.port}", f"127.0.0.1:{pair.primary.server.port}"
    with psycopg.connect(pair.server.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE filler AS SELECT g FROM generate_series(1, 1000) g")
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
    wait_until(lambda: _replayed(pair.standby.server, lsn), 20, "the standby to replay")
    states = member_states(pair.server)
    assert [(s.endpoint, s.role) for s in states] == [(standby, "standby"), (primary, "primary")]
    assert states[0].lag_bytes is not None
    assert states[0].lag_bytes < 1_000_000
    pair.primary.stop("immediate")
    states = member_states(pair.server)
    assert [(s.endpoint, s.role, s.lag_bytes) for s in states] == [(standby, "standby", None), (primary, "down", None)]
    assert "refused" in states[1].error or "failed" in states[1].error
    assert member_states(DatabaseServer("shard_98", "127.0.0.1", pair.standby.server.port, "members")) == []


def _sync_standbys(primary: DatabaseServer) -> int:
    with psycopg.connect(primary.conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone()
    return int(row[0]) if row else 0


def test_the_synchronous_standby_and_a_primary_that_lost_it_are_shown(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/metrics and /health say how many synchronous standbys a primary has, and that one whose
    commits wait for a standby it lost stalls writes."""
    from apps.common import health
    from apps.observability.collectors import member_gauges
    from apps.sharding import routing

    primary = f"127.0.0.1:{pair.primary.server.port}"
    with psycopg.connect(pair.primary.server.conninfo(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        conn.execute("SELECT pg_reload_conf()")
    wait_until(lambda: _sync_standbys(pair.primary.server) == 1, 20, "the standby to become synchronous")
    states = {s.endpoint: s for s in member_states(pair.server)}
    assert states[primary].sync_standbys == 1
    assert states[primary].sync_required
    assert not states[primary].stalls_writes
    assert states[f"127.0.0.1:{pair.standby.server.port}"].synchronous is None  # one address for both members

    class OneServer:
        servers = [pair.server]

    monkeypatch.setattr(routing, "shard_map", lambda: OneServer())
    component = health._replication_component()
    assert component is not None
    assert component["ok"]
    assert component["clusters"]["shard_98"]["primary"] == primary
    assert component["clusters"]["shard_98"]["sync_standbys"] == 1

    pair.standby.stop("immediate")  # the primary's commits now wait for ever (strict: nobody to promote)
    wait_until(lambda: _sync_standbys(pair.primary.server) == 0, 20, "the primary to lose its standby")
    component = health._replication_component()
    assert component is not None
    assert not component["ok"]
    assert "shard_98's primary waits for a synchronous standby" in component["error"]
    families = {family.name: family.samples for family in member_gauges([pair.server])}
    assert [(s.labels["member"], s.labels["role"], s.value) for s in families["shardwallet_db_member_up"]] == [
        (f"127.0.0.1:{pair.standby.server.port}", "down", 0),
        (primary, "primary", 1),
    ]
    assert [s.value for s in families["shardwallet_db_primaries"]] == [1]
    assert [s.value for s in families["shardwallet_db_sync_standbys"]] == [0]


def test_a_standby_is_synchronous_when_the_primary_says_so_for_its_address() -> None:
    from apps.sharding.members import _synchronous

    seen = [("10.0.0.2", "sync"), ("10.0.0.3", "async"), ("10.0.0.9", "async")]
    assert _synchronous(seen, "10.0.0.2", shared=False) is True
    assert _synchronous(seen, "10.0.0.3", shared=False) is False
    assert _synchronous(seen, "10.0.0.2", shared=True) is None  # two members on one address: cannot tell
    assert _synchronous([("10.0.0.2", None)], "10.0.0.2", shared=False) is None  # a login without pg_monitor
