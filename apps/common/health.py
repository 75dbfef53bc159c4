"""Health endpoints: /health/live, /health/ready and /health.

GET /health/live: the process answers; no dependency is looked at (an orchestrator restarts a
process that fails it, so a database being down must not fail it).

GET /health/ready: this process can serve: the control database, every shard the map names
and Redis answer, and every migration is applied on each database; 503 otherwise (a load
balancer takes it out of rotation until it recovers).

GET /health: each shard, the control database and Redis, each with its latency; `down` names the failing ones.

`bucket_fences` names ranges that nobody serves because a move's fence stayed longer than
`SHARD_FENCE_ALARM_SECONDS` on the shard the map still names, with the command that ends it;
like `audit_cdc` it has its own `ok` and does not count towards `status`.

Where a CDC process runs or died (its status file says it did not stop cleanly) or is expected (`AUDIT_CDC_EXPECTED`,
set by `serve`), an `audit_cdc` component shows it, with its lag per shard and its own `ok`. It does not count towards
`status`, `down` nor the HTTP status: the API serves without it, and a load balancer must
not take API servers out because the audit stream is behind.

On the public listener, when the operators' surfaces have one of their own (SHARDWALLET_OPS_BIND),
each component says only whether it is up (and its latency): the reasons name servers, slots
and commands, which are for operators; they are on the operators' listener and in the log.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from django.conf import settings
from django.db import connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.http import HttpRequest, JsonResponse

from apps.common.redis_client import redis_client
from apps.common.surfaces import PUBLIC_URLCONF

log = logging.getLogger(__name__)


def _probe(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # any failure means "down"; the message tells why
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}".strip()[:300]}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def _on_connection(alias: str, work: Any) -> Any:
    """work(connection) on `alias`'s persistent connection, which is closed if it fails: never kept broken."""
    connection = connections[alias]
    try:
        return work(connection)
    except Exception:
        connection.close()
        raise


def _select_one(connection: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _database_check(alias: str) -> Any:
    return lambda: _on_connection(alias, _select_one)


_redis_clients: dict[tuple[str, object], redis.Redis] = {}


def _redis_check() -> None:
    # One client per process (and place): a new one per probe would connect and handshake each time.
    where = (settings.REDIS_URL, settings.REDIS_SENTINEL)
    client = _redis_clients.get(where)
    if client is None:
        client = redis_client(timeout=1)
        _redis_clients[where] = client
    client.ping()


def health(request: HttpRequest) -> JsonResponse:
    components = {alias: _probe(_database_check(alias)) for alias in settings.DATABASES}
    components["redis"] = _probe(_redis_check)
    down = [name for name, component in components.items() if not component["ok"]]
    from apps.audit.status import health_component, read_status

    # Shown where one is expected, and wherever one ran and did not stop cleanly (it died: say so).
    status = read_status()
    if settings.AUDIT_CDC_EXPECTED or (status is not None and not status.get("stopped")):
        components["audit_cdc"] = health_component()
    components["bucket_fences"] = _fences_component()
    replication = _replication_component()
    if replication is not None:
        components["replication"] = replication
    body = {"status": "degraded" if down else "ok", "down": down, "components": _shown(request, components)}
    return JsonResponse(body, status=503 if down else 200)


def _shown(request: HttpRequest, components: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The components as this listener may show them; every failing one's reason is logged."""
    for name, component in components.items():
        if not component["ok"]:
            log.warning("health: %s is down: %s", name, component.get("error", ""))
    if getattr(request, "urlconf", None) != PUBLIC_URLCONF:
        return components
    return {
        name: {key: value for key, value in component.items() if key in ("ok", "latency_ms")}
        for name, component in components.items()
    }


def _replication_component() -> dict[str, Any] | None:
    """Each replicated database's members (None when no server of the map has `members`): not ok
    when a cluster has no primary or two, or a primary waits for a synchronous standby it lacks."""
    from apps.sharding.members import member_states
    from apps.sharding.routing import shard_map

    clusters: dict[str, Any] = {}
    problems: list[str] = []
    for server in shard_map().servers:
        states = member_states(server)
        if not states:
            continue
        primaries = [s.endpoint for s in states if s.role == "primary"]
        clusters[server.alias] = {
            "primary": primaries[0] if len(primaries) == 1 else primaries,
            "standbys": {
                s.endpoint: {"lag_bytes": s.lag_bytes, "synchronous": s.synchronous}
                for s in states
                if s.role == "standby"
            },
            "down": [s.endpoint for s in states if s.role == "down"],
            "sync_standbys": next((s.sync_standbys for s in states if s.role == "primary"), None),
        }
        if len(primaries) != 1:
            problems.append(f"{server.alias} has {len(primaries)} members taking writes")
        problems += [f"{server.alias}'s primary waits for a synchronous standby it has not" for s in states
                     if s.stalls_writes]  # fmt: skip
    if not clusters:
        return None
    component: dict[str, Any] = {"ok": not problems, "clusters": clusters}
    if problems:
        component["error"] = "; ".join(problems)
    return component


def _fences_component() -> dict[str, Any]:
    """Ranges nobody serves because a move's fence was left behind (its own `ok`, like `audit_cdc`)."""
    from apps.sharding.fence_alarm import stranded_fences

    try:
        stranded, _unreadable = stranded_fences()
    except Exception as exc:  # the control database down: the shards' components say so already
        return {"ok": True, "unknown": f"{type(exc).__name__}: {exc}"}
    component: dict[str, Any] = {"ok": not stranded}
    if stranded:
        component["error"] = "; ".join(f.advice for f in stranded)
        component["ranges"] = [
            {"shard": f.shard, "first": f.first, "last": f.last, "seconds": round(f.seconds)} for f in stranded
        ]
    return component


def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


_known_migrations: set[tuple[str, str]] | None = None
_migrated: set[str] = set()  # databases seen fully migrated by this process's code
_migrations_lock = threading.Lock()


def _code_migrations() -> set[tuple[str, str]]:
    """Every migration this code has: read from disk once per process."""
    global _known_migrations
    with _migrations_lock:
        if _known_migrations is None:
            _known_migrations = set(MigrationLoader(None, ignore_no_migrations=True).graph.nodes)
        return _known_migrations


def _migrations_check(alias: str) -> Any:
    def check() -> None:
        if alias in _migrated:
            return
        applied = set(_on_connection(alias, lambda c: MigrationRecorder(c).applied_migrations()))
        pending = sorted(f"{app}.{name}" for app, name in _code_migrations() - applied)
        if pending:
            shown = ", ".join(pending[:5]) + (f" and {len(pending) - 5} more" if len(pending) > 5 else "")
            raise RuntimeError(f"{len(pending)} migration(s) not applied: {shown} (run migrate_shards)")
        _migrated.add(alias)

    return check


def _ready_aliases() -> list[str]:
    from apps.sharding.routing import shard_aliases

    try:
        shards = shard_aliases()  # the live map: shards added since start-up included
    except Exception:
        shards = []
    known = [alias for alias in settings.DATABASES if alias != "default"]
    return ["default", *sorted(set(shards) | set(known))]


def ready(request: HttpRequest) -> JsonResponse:
    components: dict[str, dict[str, Any]] = {}
    for alias in _ready_aliases():
        component = _probe(_database_check(alias))
        if component["ok"]:
            migrations = _probe(_migrations_check(alias))
            if not migrations["ok"]:
                component = {"ok": False, "error": migrations["error"]}
        components[alias] = component
    components["redis"] = _probe(_redis_check)
    down = [name for name, component in components.items() if not component["ok"]]
    body = {"status": "not_ready" if down else "ready", "down": down, "components": _shown(request, components)}
    return JsonResponse(body, status=503 if down else 200)
