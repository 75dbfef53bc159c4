"""The app host: production configuration from the environment, its shard map, and its role processes.

The processes are started with the same commands as the image's entry points
(`manage.py run_api | run_worker | run_beat | run_cdc`), inside the app host's namespace,
with `SHARDWALLET_ENV=production`: every setting comes from the environment or a file, and
nothing falls back to a development default.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import yaml

from bench.stack import ROOT
from chaos.stack import SAGA_ENV
from chaos.supervisor import Program
from hosts import net
from hosts.app_login import APP_LOGIN, CDC_LOGIN
from hosts.layout import (
    API_PORT,
    APP,
    APP_DIR,
    AUDIT_HTTP_PORT,
    CLUSTER_SHARD,
    CONTROL,
    CONTROL_STANDBY_HOSTS,
    LOGS,
    OPS_PORT,
    POSTGRES_PORT,
    REDIS_MASTER_NAME,
    RELAY_PORT,
    SECRETS,
    SENTINEL_HOSTS,
    SENTINEL_PORT,
    SHARD_HOSTS,
    SHARDS_FILE,
    SLOW_SHARD,
    STANDBY_HOSTS,
    Host,
)
from hosts.servers import CA_CERT, PG_PASSWORD_FILE, redis_url, sentinel_password

BUCKETS = 1024
MANAGE = [sys.executable, str(ROOT / "manage.py")]
# The caller's own stack settings must not leak into the hosts' processes.
FOREIGN_PREFIXES = ("SHARDWALLET_", "DJANGO_", "CLICKHOUSE_", "PROMETHEUS_")


def _shard(h: Host) -> dict[str, object]:
    entry: dict[str, object] = {
        "alias": h.name,
        "host": h.address,
        "port": RELAY_PORT if h.name == SLOW_SHARD else POSTGRES_PORT,
        "name": "shardwallet",
    }
    if h.name == CLUSTER_SHARD:
        # Its other members: libpq tries them in turn and keeps the one that takes writes.
        entry["members"] = [f"{standby.address}:{POSTGRES_PORT}" for standby in STANDBY_HOSTS]
    return entry


def shard_map() -> dict[str, object]:
    """Every database on its own host (the control database and one shard clusters of three);
    the slow shard reached through its relay; passwords from a file."""
    size = BUCKETS // len(SHARD_HOSTS)
    return {
        "buckets": BUCKETS,
        "throwaway": True,
        "control": {
            "host": CONTROL.address,
            "port": POSTGRES_PORT,
            "name": "shardwallet_control",
            "members": [f"{standby.address}:{POSTGRES_PORT}" for standby in CONTROL_STANDBY_HOSTS],
        },
        "shards": [_shard(h) for h in SHARD_HOSTS],
        "bucket_ranges": [
            {
                "first": i * size,
                "last": BUCKETS - 1 if i == len(SHARD_HOSTS) - 1 else (i + 1) * size - 1,
                "shard": h.name,
            }
            for i, h in enumerate(SHARD_HOSTS)
        ],
    }


def bucket_owners() -> list[str]:
    """The shard of each bucket, in bucket order (what the client needs to place its wallets)."""
    owners: list[str] = []
    for r in shard_map()["bucket_ranges"]:  # type: ignore[attr-defined]
        owners += [r["shard"]] * (r["last"] - r["first"] + 1)
    return owners


def _secret_file(name: str, value: str) -> str:
    path = SECRETS / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


@dataclass(frozen=True)
class AppConfig:
    env: dict[str, str]
    auditor: tuple[str, str]


def configure(*, api_workers: int, api_threads: int, worker_concurrency: int) -> AppConfig:
    """Write the shard map and secrets; return the app host's environment."""
    SECRETS.mkdir(parents=True, exist_ok=True)
    SHARDS_FILE.write_text(
        "# written by hosts/app.py for `make test-hosts`: every database on its own host\n"
        + yaml.safe_dump(shard_map(), sort_keys=False)
    )
    metrics = APP_DIR / "metrics"
    metrics.mkdir(parents=True, exist_ok=True)
    auditor = ("auditor", secrets.token_urlsafe(18))
    base = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)}
    env = {
        **base,
        "DJANGO_SETTINGS_MODULE": "wallet_project.settings",
        "SHARDWALLET_ENV": "production",
        "SHARDWALLET_SECRET_KEY_FILE": _secret_file("secret_key", secrets.token_urlsafe(50)),
        "SHARDWALLET_ALLOWED_HOSTS": APP.address,
        "SHARDWALLET_SHARDS_FILE": str(SHARDS_FILE),
        "SHARDWALLET_DB_PASSWORD_FILE": str(PG_PASSWORD_FILE),
        # Production's default, verify-full, against this run's throw-away CA (the servers take TLS only).
        "SHARDWALLET_DB_SSLMODE": "verify-full",
        "SHARDWALLET_DB_SSLROOTCERT": str(CA_CERT),
        "SHARDWALLET_REDIS_URL_FILE": _secret_file("redis_url", redis_url()),
        # The master is whichever server the sentinels name (the URL's host is not used).
        "SHARDWALLET_REDIS_SENTINELS": ",".join(f"{h.address}:{SENTINEL_PORT}" for h in SENTINEL_HOSTS),
        "SHARDWALLET_REDIS_SENTINEL_MASTER": REDIS_MASTER_NAME,
        "SHARDWALLET_REDIS_SENTINEL_PASSWORD_FILE": _secret_file("sentinel_password", sentinel_password()),
        "SHARDWALLET_DEVSTACK_DIR": str(APP_DIR),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "SHARDWALLET_API_BIND": f"{APP.address}:{API_PORT}",
        "SHARDWALLET_OPS_BIND": f"127.0.0.1:{OPS_PORT}",  # production's default, said where the sockets check reads it
        "SHARDWALLET_API_WORKERS": str(api_workers),
        "SHARDWALLET_API_THREADS": str(api_threads),
        "SHARDWALLET_WORKER_CONCURRENCY": str(worker_concurrency),
        "SHARDWALLET_AUDIT_HTTP_PORT": str(AUDIT_HTTP_PORT),
        "SHARDWALLET_AUDIT_AUDITORS": ":".join(auditor),
        "SHARDWALLET_AUDIT_CDC_EXPECTED": "1",
        "SHARDWALLET_LOG_LEVEL": "WARNING",
        **SAGA_ENV,
    }
    return AppConfig(env, auditor)


def programs(config: AppConfig) -> dict[str, Program]:
    """The app host's roles, each as its own process group (gunicorn's and Celery's children with it)."""
    roles = {
        "api": ["run_api", "--bind", f"{APP.address}:{API_PORT}"],
        "worker": ["run_worker", "--log-level", "warning"],
        "beat": ["run_beat", "--log-level", "warning"],
        "cdc": ["run_cdc"],
    }
    # Each role as its least-privilege login (hosts.app_login, docs/DEPLOY.md "Database roles").
    logins = {name: CDC_LOGIN if name == "cdc" else APP_LOGIN for name in roles}
    return {
        name: Program(
            name,
            net.on(APP, [*MANAGE, *argv]),
            {**config.env, "SHARDWALLET_DB_USER": logins[name]},
            LOGS / f"{name}.log",
        )
        for name, argv in roles.items()
    }


def manage(config: AppConfig, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A one-off management command on the app host (migrate_shards, create_api_client...)."""
    return subprocess.run(  # noqa: S603 - our own command line
        net.on(APP, [*MANAGE, *args]), env=config.env, capture_output=True, text=True, timeout=timeout, check=False
    )


def python_on_app(config: AppConfig, module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
    """One of this package's modules on the app host, with its environment (the checks); output to ours."""
    return subprocess.run(  # noqa: S603 - our own command line
        net.on(APP, [sys.executable, "-m", module, *args]), env=config.env, timeout=timeout, check=False, cwd=ROOT
    )


def cdc_status(config: AppConfig) -> dict[str, Any]:
    """`manage.py cdc_status --json` on the app host: the CDC's own status and the shards' slots ({} if it fails)."""
    result = manage(config, "cdc_status", "--json", timeout=60)
    try:
        return dict(json.loads(result.stdout)) if result.returncode == 0 else {}
    except ValueError:
        return {}


def metrics(config: AppConfig) -> dict[str, float]:
    """`/metrics` from the operators' listener on the app host (its own 127.0.0.1), each sample by its line's name
    and labels ({} if it does not answer)."""
    argv = net.on(APP, ["curl", "-sf", "-m", "30", f"http://127.0.0.1:{OPS_PORT}/metrics"])
    result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    samples = {}
    for line in result.stdout.splitlines() if result.returncode == 0 else []:
        name, _, value = line.rpartition(" ")
        if name and not line.startswith("#"):
            try:
                samples[name] = float(value)
            except ValueError:
                continue
    return samples
