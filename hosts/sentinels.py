"""The broker's Redis under Sentinel, seen from its own hosts with `redis-cli`: which server the
sentinels name the master, which role each server says it has, and whether every sentinel
knows the replica and the other sentinels (a failover needs both). Passwords go through the
environment (REDISCLI_AUTH), never a command line."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from urllib.parse import urlparse

from hosts import net
from hosts.layout import HOSTS, REDIS_HOSTS, REDIS_MASTER_NAME, REDIS_PORT, SENTINEL_HOSTS, SENTINEL_PORT, Host
from hosts.servers import redis_url, sentinel_password

ERRORS = ("ERR", "NOAUTH", "WRONGPASS", "NOPERM", "Could not connect")


def _cli(on: Host, port: int, password: str, *args: str, user: str = "") -> list[str] | None:
    """`redis-cli` on the host against its own server; the answer's lines, None if it failed."""
    argv = ["redis-cli", "-h", on.address, "-p", str(port), *(["--user", user] if user else []), *args]
    env = {**os.environ, "REDISCLI_AUTH": password}
    try:
        result = subprocess.run(net.on(on, argv), capture_output=True, text=True, timeout=10, check=False, env=env)  # noqa: S603
    except subprocess.TimeoutExpired:
        return None
    lines = result.stdout.splitlines()
    if result.returncode != 0 or not lines or lines[0].startswith(ERRORS):
        return None
    return lines


def redis_cli(on: Host, *args: str) -> list[str] | None:
    """A command to the Redis server on `on`, as the broker's ACL user."""
    url = urlparse(redis_url())
    return _cli(on, REDIS_PORT, url.password or "", *args, user=url.username or "")


def sentinel_cli(on: Host, *args: str) -> list[str] | None:
    return _cli(on, SENTINEL_PORT, sentinel_password(), *args)


def role(on: Host) -> str | None:
    """What the server on `on` says it is: master or slave (None if it does not answer)."""
    lines = redis_cli(on, "role")
    return lines[0] if lines else None


def master() -> Host | None:
    """The server most sentinels name the master (a cut-off sentinel may still name the old one)."""
    named: Counter[str] = Counter()
    for sentinel in SENTINEL_HOSTS:
        lines = sentinel_cli(sentinel, "sentinel", "get-master-addr-by-name", REDIS_MASTER_NAME)
        if lines:
            named[lines[0]] += 1
    if not named:
        return None
    address, votes = named.most_common(1)[0]
    if votes * 2 <= len(SENTINEL_HOSTS):
        return None
    return next((h for h in HOSTS if h.address == address), None)


def _count(lines: list[str] | None) -> int:
    """Entries in a `sentinel replicas|sentinels` answer (each a flat list starting with `name`)."""
    return sum(1 for line in lines or [] if line == "name")


def knows_everyone(sentinel: Host) -> bool:
    replicas = _count(sentinel_cli(sentinel, "sentinel", "replicas", REDIS_MASTER_NAME))
    others = _count(sentinel_cli(sentinel, "sentinel", "sentinels", REDIS_MASTER_NAME))
    return replicas == len(REDIS_HOSTS) - 1 and others == len(SENTINEL_HOSTS) - 1


def replica_streaming(replica: Host) -> bool:
    return "master_link_status:up" in (redis_cli(replica, "info", "replication") or [])


def wait_ready(timeout: float) -> float:
    """Seconds until the replica streams and every sentinel knows it and the other sentinels:
    before that, a master lost is never replaced (a sentinel learns of the replica from the
    master's INFO every 10 s, of the others from their hellos)."""
    started = time.monotonic()
    replicas = REDIS_HOSTS[1:]  # the first starts as the master
    while time.monotonic() - started < timeout:
        if all(replica_streaming(r) for r in replicas) and all(knows_everyone(s) for s in SENTINEL_HOSTS):
            return round(time.monotonic() - started, 1)
        time.sleep(1)
    raise TimeoutError(f"the sentinels did not know the replica and each other within {timeout:.0f} s")
