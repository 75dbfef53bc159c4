from typing import Any

import pytest

from apps.sharding.shardmap import ShardMapError, load_shard_map, parse_shard_map


def valid_map(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "buckets": 8,
        "control": {"host": "127.0.0.1", "port": 5000, "name": "control"},
        "shards": [
            {"alias": "shard_00", "host": "127.0.0.1", "port": 5001, "name": "w"},
            {"alias": "shard_01", "host": "127.0.0.1", "port": 5002, "name": "w"},
        ],
        "bucket_ranges": [
            {"first": 0, "last": 3, "shard": "shard_00"},
            {"first": 4, "last": 7, "shard": "shard_01"},
        ],
    }
    data.update(overrides)
    return data


def test_valid_map_sends_each_bucket_to_its_range() -> None:
    shard_map = parse_shard_map(valid_map())
    assert [shard_map.alias_for_bucket(b) for b in range(8)] == ["shard_00"] * 4 + ["shard_01"] * 4
    assert shard_map.aliases == ["shard_00", "shard_01"]
    assert shard_map.buckets_of("shard_01") == [4, 5, 6, 7]


def test_bucket_outside_the_map_is_refused() -> None:
    with pytest.raises(ShardMapError, match="outside"):
        parse_shard_map(valid_map()).alias_for_bucket(8)


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ([{"first": 0, "last": 4, "shard": "shard_00"}, {"first": 4, "last": 7, "shard": "shard_01"}], "overlap"),
        ([{"first": 0, "last": 2, "shard": "shard_00"}, {"first": 4, "last": 7, "shard": "shard_01"}], "3..3"),
        ([{"first": 0, "last": 3, "shard": "shard_00"}, {"first": 4, "last": 6, "shard": "shard_01"}], "7..7"),
        ([{"first": 0, "last": 3, "shard": "shard_00"}, {"first": 4, "last": 7, "shard": "shard_09"}], "unknown"),
        ([{"first": 5, "last": 2, "shard": "shard_00"}], "first <= last"),
        ([{"first": 0, "last": 9, "shard": "shard_00"}], "outside"),
    ],
)
def test_inconsistent_bucket_ranges_are_refused_with_a_readable_error(ranges: list[Any], message: str) -> None:
    with pytest.raises(ShardMapError, match=message):
        parse_shard_map(valid_map(bucket_ranges=ranges))


def test_duplicate_alias_is_refused() -> None:
    shards = [
        {"alias": "shard_00", "host": "127.0.0.1", "port": 5001, "name": "w"},
        {"alias": "shard_00", "host": "127.0.0.1", "port": 5002, "name": "w"},
    ]
    with pytest.raises(ShardMapError, match="listed twice"):
        parse_shard_map(valid_map(shards=shards))


def test_two_shards_on_one_database_are_refused() -> None:
    shards = [
        {"alias": "shard_00", "host": "127.0.0.1", "port": 5001, "name": "w"},
        {"alias": "shard_01", "host": "127.0.0.1", "port": 5001, "name": "w"},
    ]
    with pytest.raises(ShardMapError, match="same host"):
        parse_shard_map(valid_map(shards=shards))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"buckets": 0}, "buckets"),
        ({"buckets": 5000}, "buckets"),
        ({"control": None}, "control"),
        ({"shards": []}, "non-empty"),
        ({"shards": [{"alias": "db1", "host": "h", "port": 1, "name": "n"}]}, "shard_00"),
        ({"shards": [{"alias": "shard_00", "host": "h", "name": "n"}]}, "missing"),
        ({"shards": [{"alias": "shard_00", "host": "h", "port": "x", "name": "n"}]}, "port"),
    ],
)
def test_malformed_servers_are_refused(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ShardMapError, match=message):
        parse_shard_map(valid_map(**override))


def test_missing_and_unparsable_files_are_reported(tmp_path: Any) -> None:
    with pytest.raises(ShardMapError, match="does not exist"):
        load_shard_map(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("buckets: [1, 2\n")
    with pytest.raises(ShardMapError, match="not valid YAML"):
        load_shard_map(broken)


def test_the_shipped_shard_maps_are_valid() -> None:
    assert load_shard_map("shards.yaml").aliases == ["shard_00", "shard_01", "shard_02", "shard_03"]
    assert len(load_shard_map("tests/shards.test.yaml").aliases) >= 2


def test_a_declared_shard_may_hold_no_bucket_yet() -> None:
    """A server declared for `shard_add` receives buckets only by moves."""
    shard_map = parse_shard_map(valid_map(bucket_ranges=[{"first": 0, "last": 7, "shard": "shard_00"}]))
    assert shard_map.buckets_of("shard_01") == []
    assert "shard_01" in shard_map.aliases


def test_a_password_may_come_from_a_file_read_at_each_connection_and_never_stored(tmp_path, monkeypatch) -> None:
    from django.db import connections

    from apps.observability.backend.base import DatabaseWrapper

    secret = tmp_path / "shard_01.password"
    secret.write_text("first-secret\n")
    data = valid_map()
    data["shards"][1]["password_file"] = str(secret)
    server = parse_shard_map(data).shards["shard_01"]
    assert server.password == ""  # what the control database would store (mapstore.save_server)
    configured = connections.configure_settings(
        {"default": connections.settings["default"], "shard_01": server.django_settings()}
    )["shard_01"]
    django_connection = DatabaseWrapper(configured, "shard_01")
    assert django_connection.get_connection_params()["password"] == "first-secret"
    secret.write_text("rotated-secret\n")  # no restart: the next connection takes it
    assert django_connection.get_connection_params()["password"] == "rotated-secret"
    assert "password='rotated-secret'" in server.conninfo()

    default = tmp_path / "default.password"
    default.write_text("the-default\n")
    monkeypatch.setenv("SHARDWALLET_DB_PASSWORD_FILE", str(default))
    assert parse_shard_map(valid_map()).shards["shard_00"].secret == "the-default"
    default.write_text("rotated-default\n")
    assert parse_shard_map(valid_map()).shards["shard_00"].secret == "rotated-default"


def test_a_conninfo_value_keeps_its_quotes_and_backslashes() -> None:
    data = valid_map()
    data["shards"][0]["password"] = "it's a back\\slash"
    from psycopg.conninfo import conninfo_to_dict

    assert conninfo_to_dict(parse_shard_map(data).shards["shard_00"].conninfo())["password"] == "it's a back\\slash"


def test_an_unreadable_password_file_and_two_passwords_are_refused(tmp_path) -> None:
    data = valid_map()
    data["shards"][0]["password_file"] = str(tmp_path / "absent")
    with pytest.raises(ShardMapError, match=r"shard_00.*password file .*absent cannot be read"):
        parse_shard_map(data)
    data["shards"][0]["password"] = "inline"
    with pytest.raises(ShardMapError, match="password or password_file, not both"):
        parse_shard_map(data)


def test_connections_give_up_on_an_unreachable_server_within_seconds() -> None:
    options = parse_shard_map(valid_map()).shards["shard_00"].django_settings()["OPTIONS"]
    assert options["tcp_user_timeout"] == 5000
    assert options["keepalives"] == 1
    assert "tcp_user_timeout=5000" in parse_shard_map(valid_map()).control.conninfo().replace("'", "")


def test_a_connect_to_a_server_that_accepts_but_never_answers_gives_up_within_its_timeout() -> None:
    """A real connect, timed: a server that hangs (stopped, or its machine stalled) after the
    TCP handshake must not hang the caller; the kernel completes the handshake, nothing answers."""
    import socket
    import time

    import psycopg

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # never accepted, never answered
        port = hung.getsockname()[1]
        data = valid_map()
        data["shards"][0]["port"] = port
        server = parse_shard_map(data).shards["shard_00"]
        settings = server.django_settings()
        for connect in (
            lambda: psycopg.connect(server.conninfo()),  # the mover, the CDC, the lease
            lambda: psycopg.connect(  # Django's connections, with the settings' options
                host=settings["HOST"],
                port=settings["PORT"],
                dbname=settings["NAME"],
                user=settings["USER"],
                **{k: v for k, v in settings["OPTIONS"].items() if k != "options"},
            ),
        ):
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                connect()
            waited = time.monotonic() - started
            assert 1 <= waited < 15, waited  # its connect_timeout (3-5 s), not forever and not at once
