"""The local stack on real servers: a small private stack beside the test session's own."""

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from apps.sharding.devstack import Devstack, DevstackError
from apps.sharding.shardmap import parse_shard_map
from tests.factories import free_port


def one_shard_map(control_port: int, shard_port: int):
    return parse_shard_map(
        {
            "buckets": 4,
            "control": {"host": "127.0.0.1", "port": control_port, "name": "ctl"},
            "shards": [{"alias": "shard_00", "host": "127.0.0.1", "port": shard_port, "name": "wallets"}],
            "bucket_ranges": [{"first": 0, "last": 3, "shard": "shard_00"}],
        }
    )


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    # Under var/ (not /tmp/pytest-of-root, which the postgres user cannot enter).
    path = Path(settings.DEVSTACK_DIR) / "devstack-under-test"
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_up_is_idempotent_and_down_stops_only_what_it_started(stack_dir: Path, devstack: Devstack) -> None:
    shard_map = one_shard_map(free_port(), free_port())
    stack = Devstack(shard_map, stack_dir, settings.REDIS_URL)
    try:
        first = stack.up()
        assert "default: started" in first[0]
        assert "shard_00: started" in first[1]
        # The session's Redis already answers: reused, not started.
        assert first[2].endswith("(reused)")
        second = stack.up()
        assert all(line.endswith("(reused)") for line in second)
        server = shard_map.shards["shard_00"]
        conninfo = f"host=127.0.0.1 port={server.port} user=postgres dbname=wallets"
        with psycopg.connect(conninfo) as conn:
            assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        status = stack.status()
        assert status["shard_00"].startswith("running")
        assert "external" in status["redis"]
    finally:
        report = stack.down()
    assert report == ["default: stopped", "shard_00: stopped"]
    assert not stack.status()["shard_00"].startswith("running")
    assert devstack.redis_answers(), "down must not stop a Redis it did not start"


def test_a_taken_port_gives_a_clear_error(stack_dir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        stack = Devstack(one_shard_map(taken, free_port()), stack_dir, settings.REDIS_URL)
        with pytest.raises(DevstackError, match=f"port {taken} .* is taken"):
            stack.up()


def test_a_replicated_shard_is_left_to_its_failover_manager(stack_dir: Path) -> None:
    """A shard listed with `members` is a Patroni cluster (`make chaos --clusters`): the stack
    neither creates nor starts nor stops a server of its own at its address."""
    shard_port = free_port()
    raw = {
        "buckets": 4,
        "control": {"host": "127.0.0.1", "port": free_port(), "name": "ctl"},
        "shards": [{"alias": "shard_00", "host": "127.0.0.1", "port": shard_port, "name": "wallets",
                    "members": [f"127.0.0.1:{free_port()}"]}],
        "bucket_ranges": [{"first": 0, "last": 3, "shard": "shard_00"}],
    }  # fmt: skip
    stack = Devstack(parse_shard_map(raw), stack_dir, settings.REDIS_URL)
    try:
        report = stack.up()
        assert "default: started" in report[0]
        assert report[1] == f"shard_00: a replicated cluster at 127.0.0.1:{shard_port}, run by its failover manager"
        assert [c.server.alias for c in stack.clusters()] == ["default"]
        assert not (stack_dir / "pg" / "shard_00").exists()
    finally:
        assert stack.down() == ["default: stopped"]
