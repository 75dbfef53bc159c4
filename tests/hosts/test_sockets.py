"""Who may talk to whom between the hosts: listeners on their own address, connections on the deployment's edges."""

from __future__ import annotations

from hosts.layout import APP, AUDIT_HTTP_PORT, CLIENT, REDIS, SHARD_HOSTS, SLOW_SHARD, host
from hosts.sockets import Socket, problems, summary

ANY = "0.0.0.0"  # noqa: S104 - what `ss` shows as a listener's peer, and the refused case
SHARD = SHARD_HOSTS[0]
SLOW = host(SLOW_SHARD)


def listen(on: str, address: str, port: int) -> Socket:
    return Socket(on, "tcp", "LISTEN", address, port, ANY, 0, "")


def conn(on: str, local: str, local_port: int, peer: str, peer_port: int) -> Socket:
    return Socket(on, "tcp", "ESTAB", local, local_port, peer, peer_port, "")


DEPLOYMENT = [
    listen(SHARD.name, SHARD.address, 5432),
    listen(SLOW.name, SLOW.address, 6432),
    listen(REDIS.name, REDIS.address, 6379),
    listen(APP.name, APP.address, 8000),
    listen(APP.name, "127.0.0.1", AUDIT_HTTP_PORT),
    conn(APP.name, APP.address, 40000, SHARD.address, 5432),
    conn(SHARD.name, SHARD.address, 5432, APP.address, 40000),
    conn(APP.name, APP.address, 40001, SLOW.address, 6432),
    conn(SLOW.name, SLOW.address, 40002, SLOW.address, 5432),  # the relay to its own server
    conn(APP.name, APP.address, 40003, REDIS.address, 6379),
    conn(CLIENT.name, CLIENT.address, 40004, APP.address, 8000),
    conn(APP.name, APP.address, 8000, CLIENT.address, 40004),
    conn(APP.name, "127.0.0.1", 40005, "127.0.0.1", AUDIT_HTTP_PORT),  # reconcile on the app host
]


def test_the_deployments_sockets_are_allowed() -> None:
    assert problems(DEPLOYMENT) == []


def test_a_server_listening_on_every_address_is_refused() -> None:
    found = problems([*DEPLOYMENT, listen(REDIS.name, ANY, 6379)])
    assert len(found) == 1
    assert f"listens on {ANY}, not only its host's {REDIS.address}" in found[0]


def test_loopback_other_than_the_audit_endpoint_is_refused() -> None:
    found = problems([*DEPLOYMENT, listen(SHARD.name, "127.0.0.1", 5432)])
    assert found == [f"loopback in use: {listen(SHARD.name, '127.0.0.1', 5432)}"]


def test_a_connection_off_the_deployments_edges_is_refused() -> None:
    # The client reaching a shard directly, around the API.
    found = problems([*DEPLOYMENT, conn(CLIENT.name, CLIENT.address, 40010, SHARD.address, 5432)])
    assert len(found) == 1
    assert "client -> shard_00:5432" in found[0]


def test_the_slow_shard_is_reached_through_its_relay_only() -> None:
    found = problems([*DEPLOYMENT, conn(APP.name, APP.address, 40011, SLOW.address, 5432)])
    assert len(found) == 1


def test_a_unix_socket_at_a_path_is_refused() -> None:
    ctl = Socket(APP.name, "unix", "LISTEN", "/root/.gunicorn/gunicorn.ctl", 0, "", 0, "")
    abstract = Socket(APP.name, "unix", "LISTEN", "@/some/abstract", 0, "", 0, "")
    assert len(problems([*DEPLOYMENT, ctl, abstract])) == 1


def test_summary_counts_the_connections_each_host_makes() -> None:
    assert summary(DEPLOYMENT) == {
        "app->redis:6379": 1,
        "app->shard_00:5432": 1,
        f"app->{SLOW_SHARD}:6432": 1,
        "client->app:8000": 1,
        f"{SLOW_SHARD}->{SLOW_SHARD}:5432": 1,
    }


def test_a_required_connection_that_is_not_there_is_reported() -> None:
    from hosts.layout import CONTROL
    from hosts.sockets import missing

    complete = [
        *DEPLOYMENT,
        *(conn(APP.name, APP.address, 41000 + i, s.address, 5432) for i, s in enumerate(SHARD_HOSTS) if s != SLOW),
        conn(APP.name, APP.address, 41100, CONTROL.address, 5432),
    ]
    assert missing(complete) == []
    without_control = [s for s in complete if s.peer != CONTROL.address]
    assert missing(without_control) == [
        f"no connection app -> {CONTROL.name}:5432 or app -> control_b:5432 or app -> control_c:5432"
        " while the load runs"
    ]
    assert len(missing([])) == len(SHARD_HOSTS) + 3  # an empty look proves nothing


def test_the_replicated_shards_members_talk_to_each_other_and_to_no_one_else() -> None:
    from hosts.layout import ETCD_PEER_PORT, MEMBER_HOSTS, PATRONI_PORT

    first, second, third = MEMBER_HOSTS
    among_members = [
        conn(second.name, second.address, 42000, first.address, 5432),  # a standby's replication
        conn(third.name, third.address, 42001, second.address, ETCD_PEER_PORT),  # etcd's peers
        conn(first.name, first.address, 42002, third.address, PATRONI_PORT),  # Patroni asking another member
        conn(APP.name, APP.address, 42003, third.address, 5432),  # libpq trying a standby
    ]
    assert problems(among_members) == []
    other_shard = SHARD_HOSTS[1]
    found = problems([conn(second.name, second.address, 42010, other_shard.address, 5432)])
    assert len(found) == 1
    assert f"{second.name} -> {other_shard.name}:5432" in found[0]


def test_the_replicated_shard_is_reached_at_whichever_member_leads() -> None:
    from hosts.layout import CLUSTER_SHARD, CONTROL, MEMBER_HOSTS
    from hosts.sockets import missing

    others = [s for s in SHARD_HOSTS if s.name != CLUSTER_SHARD]
    base = [
        *DEPLOYMENT,
        *(conn(APP.name, APP.address, 43000 + i, s.address, 6432 if s == SLOW else 5432) for i, s in enumerate(others)),
        conn(APP.name, APP.address, 43100, CONTROL.address, 5432),
    ]
    base = [s for s in base if s.peer != host(CLUSTER_SHARD).address]
    promoted = MEMBER_HOSTS[2]
    assert missing([*base, conn(APP.name, APP.address, 43200, promoted.address, 5432)]) == []
    assert len(missing(base)) == 1
    assert CLUSTER_SHARD in missing(base)[0]


def test_redis_under_sentinel_talks_within_its_hosts_and_the_app_follows_the_master() -> None:
    from hosts.layout import CONTROL, REDIS_B, SENTINEL_PORT
    from hosts.sockets import missing

    watched = [
        conn(REDIS_B.name, REDIS_B.address, 44000, REDIS.address, 6379),  # the replica's link
        conn(APP.name, APP.address, 44001, REDIS_B.address, SENTINEL_PORT),  # the app asks a sentinel
        conn(APP.name, APP.address, 44002, APP.address, SENTINEL_PORT),  # ... the one on its own host too
        conn(REDIS.name, REDIS.address, 44003, REDIS_B.address, 6379),  # a sentinel watching the replica
        conn(REDIS_B.name, REDIS_B.address, 44004, APP.address, SENTINEL_PORT),  # sentinels among themselves
    ]
    assert problems([*DEPLOYMENT, *watched]) == []
    # No sentinel port on a host that runs no sentinel; no Redis reached by the client.
    assert len(problems([conn(APP.name, APP.address, 44010, CONTROL.address, SENTINEL_PORT)])) == 1
    assert len(problems([conn(CLIENT.name, CLIENT.address, 44011, REDIS_B.address, 6379)])) == 1
    # After a failover the app's broker connections go to the promoted replica: still required-and-seen.
    shards = enumerate(SHARD_HOSTS)
    others = [
        *(conn(APP.name, APP.address, 45000 + i, s.address, 6432 if s == SLOW else 5432) for i, s in shards),
        conn(APP.name, APP.address, 45100, CONTROL.address, 5432),
        conn(CLIENT.name, CLIENT.address, 45101, APP.address, 8000),
    ]
    assert missing([*others, conn(APP.name, APP.address, 45200, REDIS_B.address, 6379)]) == []
    assert len(missing(others)) == 1
