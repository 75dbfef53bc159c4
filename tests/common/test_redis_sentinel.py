"""Redis Sentinel: the service's Redis clients and the Celery workers find the master through the
sentinels and follow a failover without a restart. Real redis-server processes (a master, a
replica and three sentinels on free ports), a real Celery worker."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.sentinel
from celery import Celery
from django.conf import settings
from django.test import Client

from apps.common import health
from apps.common.redis_client import ONE_TRY, SentinelLayout, broker_settings, parse_sentinels, redis_client
from apps.transfers.api.views import render_transfer
from apps.transfers.creation import transfer_create
from apps.transfers.models import Transfer
from tests.factories import ALL_DATABASES, free_port, make_client, make_wallet, transfer_request
from tests.polling import wait_until
from tests.workers import Worker

PASSWORD = "test-only-sentinel-redis"
SENTINEL_PASSWORD = "test-only-sentinel"
MASTER = "shardwallet_test"


def test_sentinels_are_read_as_host_port_pairs() -> None:
    assert parse_sentinels(" 10.0.0.1:26379, redis-b:26380 ,") == (("10.0.0.1", 26379), ("redis-b", 26380))
    assert parse_sentinels("") == ()
    for bad in ("10.0.0.1", "host:port", ":26379"):
        with pytest.raises(ValueError, match="a sentinel is host:port"):
            parse_sentinels(bad)


def test_the_broker_url_names_every_sentinel_and_the_master() -> None:
    layout = SentinelLayout((("10.0.0.1", 26379), ("10.0.0.2", 26379)), "wallets", "s3cret")
    url, options = broker_settings(
        "redis://:p%40ss@ignored:6379/2", layout, {"visibility_timeout": 300, "socket_timeout": 5}
    )
    assert url == "sentinel://:p%40ss@10.0.0.1:26379/2;sentinel://:p%40ss@10.0.0.2:26379/2"
    assert options == {
        "visibility_timeout": 300,
        "socket_timeout": 5,
        "master_name": "wallets",
        # The sentinels' sockets time out too, after one try each: the next sentinel is the retry.
        "sentinel_kwargs": {"password": "s3cret", "socket_timeout": 5, **ONE_TRY},
    }
    assert ONE_TRY["retry"].get_retries() == 0
    assert broker_settings("redis://:x@h:1/0", None, {"a": 1}) == ("redis://:x@h:1/0", {"a": 1})


@dataclass
class Sentinels:
    master: subprocess.Popen[bytes]
    master_port: int
    replica_port: int
    sentinel_ports: list[int]

    @property
    def layout(self) -> SentinelLayout:
        return SentinelLayout(tuple(("127.0.0.1", port) for port in self.sentinel_ports), MASTER, SENTINEL_PASSWORD)

    def master_address(self) -> tuple[str, int] | None:
        """Where the clients find the master: the first sentinel reporting it up and a master.

        Not `get-master-addr-by-name`: mid-failover a sentinel names the promoted replica there
        while its master entry still reads down, and clients (redis-py's discovery) find no master.
        """
        sentinel = redis.sentinel.Sentinel(
            [("127.0.0.1", port) for port in self.sentinel_ports],
            sentinel_kwargs={"password": SENTINEL_PASSWORD, "socket_timeout": 1},
        )
        try:
            host, port = sentinel.discover_master(MASTER)
        except redis.RedisError:
            return None
        return str(host), int(port)


def _start(directory: Path, name: str, conf: str, *args: str) -> subprocess.Popen[bytes]:
    path = directory / f"{name}.conf"
    path.write_text(conf)
    log = (directory / f"{name}.log").open("wb")
    return subprocess.Popen(["redis-server", str(path), *args], stdout=log, stderr=subprocess.STDOUT)


def _answers(port: int, password: str) -> bool:
    try:
        return bool(redis.Redis(port=port, password=password, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _knows_everyone(port: int, others: int) -> bool:
    try:
        client = redis.Redis(port=port, password=SENTINEL_PASSWORD, socket_timeout=0.5)
        return len(client.sentinel_slaves(MASTER)) == 1 and len(client.sentinel_sentinels(MASTER)) == others
    except redis.RedisError:
        return False


@pytest.fixture
def sentinels() -> Iterator[Sentinels]:
    directory = Path(settings.DEVSTACK_DIR) / f"sentinel-{free_port()}"
    directory.mkdir(parents=True)
    master_port, replica_port = free_port(), free_port()
    sentinel_ports = [free_port() for _ in range(3)]
    common = f"bind 127.0.0.1\ndir {directory}\nsave ''\nappendonly no\nrequirepass {PASSWORD}\nmasterauth {PASSWORD}\n"
    processes = [
        _start(directory, "master", f"port {master_port}\n{common}"),
        _start(directory, "replica", f"port {replica_port}\n{common}replicaof 127.0.0.1 {master_port}\n"),
    ]
    try:
        for port in (master_port, replica_port):
            wait_until(partial(_answers, port, PASSWORD), 20, f"redis on {port}")
        for index, port in enumerate(sentinel_ports):
            conf = (
                f"port {port}\nbind 127.0.0.1\ndir {directory}\nrequirepass {SENTINEL_PASSWORD}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
                f"sentinel auth-pass {MASTER} {PASSWORD}\nsentinel sentinel-pass {SENTINEL_PASSWORD}\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
            )
            processes.append(_start(directory, f"sentinel-{index}", conf, "--sentinel"))
        for port in sentinel_ports:
            wait_until(partial(_answers, port, SENTINEL_PASSWORD), 20, f"sentinel on {port}")
        replica = redis.Redis(port=replica_port, password=PASSWORD)
        wait_until(lambda: replica.info("replication").get("master_link_status") == "up", 20, "the replica")
        # A failover needs each sentinel to know the replica (from the master's INFO, every 10 s)
        # and the other sentinels (their hellos): before that, a killed master is never replaced.
        for port in sentinel_ports:
            wait_until(partial(_knows_everyone, port, len(sentinel_ports) - 1), 30, f"sentinel {port} to know all")
        yield Sentinels(processes[0], master_port, replica_port, sentinel_ports)
    finally:
        for process in processes:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def through_sentinels(sentinels: Sentinels, settings: Any) -> Sentinels:
    """This process's settings point at the sentinels; the master's password and database from the URL."""
    settings.REDIS_SENTINEL = sentinels.layout
    settings.REDIS_URL = f"redis://:{PASSWORD}@127.0.0.1:1/0"  # the host is the sentinels' to name
    health._redis_clients.clear()
    return sentinels


def fail_over(sentinels: Sentinels) -> None:
    """SIGKILL the master once the replica has everything, and wait until the sentinels promote it."""
    master = redis.Redis(port=sentinels.master_port, password=PASSWORD)
    assert master.wait(1, 5000) == 1  # the replica acknowledged every write
    sentinels.master.send_signal(signal.SIGKILL)
    sentinels.master.wait()
    wait_until(lambda: sentinels.master_address() == ("127.0.0.1", sentinels.replica_port), 60, "the failover")


def _value(client: redis.Redis, key: str) -> bytes | None:
    try:
        return client.get(key)  # type: ignore[return-value]
    except redis.RedisError:
        return None


@pytest.mark.slow
@pytest.mark.django_db(databases=ALL_DATABASES)
def test_the_redis_clients_and_health_follow_a_failover(through_sentinels: Sentinels) -> None:
    client = redis_client(timeout=1)
    client.set("sentinel-test", "before")
    assert client.info("server")["tcp_port"] == through_sentinels.master_port
    assert "redis" not in Client().get("/health").json()["down"]

    fail_over(through_sentinels)
    # The same client, asked again: it finds the promoted replica, which holds what was written.
    wait_until(lambda: _value(client, "sentinel-test") == b"before", 30, "the client on the new master")
    client.set("sentinel-test", "after")
    assert client.info("server")["tcp_port"] == through_sentinels.replica_port
    wait_until(lambda: "redis" not in Client().get("/health").json()["down"], 30, "/health's redis on the new master")


def _advance(app: Celery, transfer_id: Any) -> None:
    app.send_task("apps.transfers.tasks.advance_transfer", args=[str(transfer_id)])


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_a_worker_takes_its_tasks_through_the_sentinels_before_and_after_a_failover(
    through_sentinels: Sentinels,
) -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1_000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    env = {
        "SHARDWALLET_REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in through_sentinels.sentinel_ports),
        "SHARDWALLET_REDIS_SENTINEL_MASTER": MASTER,
        "SHARDWALLET_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        "SHARDWALLET_REDIS_URL": settings.REDIS_URL,
    }
    broker, options = broker_settings(settings.REDIS_URL, settings.REDIS_SENTINEL, {})
    sender = Celery("sentinel-test", broker=broker, broker_transport_options=options, set_as_current=False)

    def paid(amount: int) -> Transfer:
        request = transfer_request(owner, payer, payee.id, amount)
        created = transfer_create(request, render=render_transfer, drain=False).transfer
        assert created is not None
        assert created.status != "completed"  # the credit on the other shard is the worker's to do
        _advance(sender, created.id)
        return created

    worker = Worker(env=env)
    try:
        first = paid(10)
        wait_until(lambda: Transfer.objects.using("shard_00").get(id=first.id).status == "completed", 30, "the task")
        fail_over(through_sentinels)
        second = paid(20)
        wait_until(
            lambda: Transfer.objects.using("shard_00").get(id=second.id).status == "completed",
            60,
            "the task sent after the failover",
        )
    finally:
        worker.stop()
        sender.close()
    assert "Connected to sentinel://" in worker.log_text()
