"""TLS to the database servers: the shard map's sslmode/sslrootcert/sslcert/sslkey reach every
connection, a server that takes TLS only refuses a plain one, and verify-full checks the CA."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from apps.sharding.devstack import PostgresCluster
from apps.sharding.shardmap import DatabaseServer, ShardMapError, parse_shard_map
from hosts.tls import SERVER_TLS_CONF, Authority, install
from tests.factories import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[DatabaseServer, Authority, Path]]:
    """A PostgreSQL server of its own that takes TLS only, with a certificate from a throw-away CA."""
    port = free_port()
    root = Path(settings.DEVSTACK_DIR) / f"tls-{port}"
    authority = Authority.make(root / "ca")
    cert, key = authority.issue(root / "ca", "server", ip="127.0.0.1")
    server = DatabaseServer("shard_99", "127.0.0.1", port, "postgres", "postgres")
    cluster = PostgresCluster(server, root / "data", extra_conf=SERVER_TLS_CONF)
    cluster.initialise()
    (cluster.data_dir / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 trust\n")
    install(cluster.data_dir, cert, key)
    cluster.start()
    try:
        yield server, authority, root
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def with_tls(server: DatabaseServer, **tls: str) -> DatabaseServer:
    return DatabaseServer(server.alias, server.host, server.port, server.name, server.user, **tls)


def test_a_tls_only_server_refuses_a_plain_connection(tls_server: tuple[DatabaseServer, Authority, Path]) -> None:
    server, _, _ = tls_server
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba.conf entry.*no encryption"):
        psycopg.connect(with_tls(server, sslmode="disable").conninfo()).close()


def test_verify_full_connects_with_the_ca_and_refuses_another(
    tls_server: tuple[DatabaseServer, Authority, Path],
) -> None:
    server, authority, root = tls_server
    verified = with_tls(server, sslmode="verify-full", sslrootcert=str(authority.cert))
    with psycopg.connect(verified.conninfo()) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    stranger = Authority.make(root / "other-ca", "somebody else's CA")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(with_tls(server, sslmode="verify-full", sslrootcert=str(stranger.cert)).conninfo()).close()


def test_django_connections_carry_the_servers_tls(tls_server: tuple[DatabaseServer, Authority, Path]) -> None:
    """The settings Django's backend connects with (OPTIONS) hold the same parameters as conninfo."""
    server, authority, _ = tls_server
    verified = with_tls(server, sslmode="verify-full", sslrootcert=str(authority.cert))
    options = verified.django_settings()["OPTIONS"]
    assert (options["sslmode"], options["sslrootcert"]) == ("verify-full", str(authority.cert))
    params = {k: v for k, v in options.items() if k != "options"}
    with psycopg.connect(host=server.host, port=server.port, dbname="postgres", user="postgres", **params) as conn:
        assert conn.info.parameter_status("server_version")
    plain = {**params, "sslmode": "disable"}
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(host=server.host, port=server.port, dbname="postgres", user="postgres", **plain).close()


def test_the_shard_map_takes_tls_keys_and_refuses_an_unknown_mode() -> None:
    layout = {
        "buckets": 4,
        "control": {"host": "10.0.0.1", "port": 5432, "name": "control", "sslmode": "verify-full",
                    "sslrootcert": "/etc/ca.crt", "sslcert": "/etc/app.crt", "sslkey": "/etc/app.key"},
        "shards": [{"alias": "shard_00", "host": "10.0.0.2", "port": 5432, "name": "s0"}],
        "bucket_ranges": [{"first": 0, "last": 3, "shard": "shard_00"}],
    }  # fmt: skip
    control = parse_shard_map(layout).control
    assert control.tls == {
        "sslmode": "verify-full", "sslrootcert": "/etc/ca.crt", "sslcert": "/etc/app.crt", "sslkey": "/etc/app.key",
    }  # fmt: skip
    assert "sslmode='verify-full'" in control.conninfo()
    layout["control"]["sslmode"] = "sometimes"
    with pytest.raises(ShardMapError, match="sslmode must be one of"):
        parse_shard_map(layout)
