"""Where the Redis that holds the broker and the rate limits is: one server (SHARDWALLET_REDIS_URL),
or, with Redis Sentinel (SHARDWALLET_REDIS_SENTINELS), whichever server the sentinels name the
master, asked again whenever a connection fails, so a failover is followed without a restart.

Every client of it (the health probe, the rate limits, the sweeper's flags, the workers'
readiness beat) is made here; Celery's broker URL and transport options come from
`broker_settings`, which the settings call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlparse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

# One try per sentinel: the next sentinel is the retry. redis-py's default (three more tries
# with backoff) would make one silent sentinel host cost four timeouts before the next is asked.
ONE_TRY: dict[str, Any] = {"retry": Retry(NoBackoff(), 0)}


@dataclass(frozen=True)
class SentinelLayout:
    sentinels: tuple[tuple[str, int], ...]
    master: str  # the name the sentinels monitor the master by
    password: str = ""  # the sentinels' own (requirepass in their configuration), if any


def parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port,...` (empty: no sentinels)."""
    out = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"a sentinel is host:port, got {item!r}")
        out.append((host, int(port)))
    return tuple(out)


def broker_settings(url: str, layout: SentinelLayout | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and transport options: the Redis URL, or kombu's `sentinel://` with
    one address per sentinel (the URL's password and database are the master's)."""
    if layout is None or not layout.sentinels:
        return url, options
    parsed = urlparse(url)
    userinfo = ""
    if parsed.password:
        username, password = unquote(parsed.username or ""), unquote(parsed.password)
        userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}@"
    database = parsed.path.lstrip("/") or "0"
    broker = ";".join(f"sentinel://{userinfo}{host}:{port}/{database}" for host, port in layout.sentinels)
    # The sentinels' own connections take only `sentinel_kwargs`: the same timeouts as the
    # master's, or a sentinel host that stops answering would hang every discovery.
    timeouts: dict[str, Any] = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options}
    sentinel_kwargs: dict[str, Any] = {**timeouts, **ONE_TRY}
    if layout.password:
        sentinel_kwargs["password"] = layout.password
    return broker, {**options, "master_name": layout.master, "sentinel_kwargs": sentinel_kwargs}


def redis_client(*, timeout: float, connect_timeout: float | None = None) -> redis.Redis:
    """A client of the Redis the service uses, with these socket timeouts."""
    from django.conf import settings

    connect_timeout = timeout if connect_timeout is None else connect_timeout
    layout: SentinelLayout | None = settings.REDIS_SENTINEL
    if layout is None or not layout.sentinels:
        return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=timeout, socket_connect_timeout=connect_timeout)
    parsed = urlparse(settings.REDIS_URL)
    sentinel = Sentinel(
        list(layout.sentinels),
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        sentinel_kwargs={
            "password": layout.password or None,
            "socket_timeout": timeout,
            "socket_connect_timeout": connect_timeout,
            **ONE_TRY,
        },
    )
    return sentinel.master_for(
        layout.master,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        username=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        db=int(parsed.path.lstrip("/") or 0),
    )
