"""The fault run's own stack (ports 296xx, var/chaos/) and the wallets it plays with."""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import uuid
from pathlib import Path
from typing import IO

import psutil

from bench.stack import ROOT, StackLayout, api_command, beat_command, cdc_command, worker_command
from chaos.clusters import Clusters
from chaos.supervisor import Program
from chaos.workload import Wallets

CHAOS = StackLayout(
    dir=ROOT / "var" / "chaos", base_port=29600, redis_port=29679, api_port=29680, audit_http_port=29623
)
CLUSTERS_DIR = CHAOS.dir / "clusters"  # `--clusters`: the shards' Patroni members and etcd

# Fast saga timings, as the fault tests use, so that recovery happens within the run: the
# sweeper looks every second for transfers untouched for 2 s. Retries back off to 1 s; 40
# of them (about 30 s) outlast the longest outage the schedule causes (a crashed shard is
# back within ~10 s), so a transfer parks only if something is really wrong.
SAGA_ENV = {
    "SHARDWALLET_SAGA_RETRY_BASE_SECONDS": "0.2",
    "SHARDWALLET_SAGA_RETRY_MAX_SECONDS": "1",
    "SHARDWALLET_SAGA_MAX_RETRIES": "40",
    "SHARDWALLET_SAGA_STALLED_AFTER_SECONDS": "2",
    "SHARDWALLET_SAGA_SWEEP_INTERVAL_SECONDS": "1",
    # A refund whose request died after its reservation is carried on within seconds.
    "SHARDWALLET_REFUND_RESUME_AFTER_SECONDS": "3",
    "SHARDWALLET_REFUND_RESUME_INTERVAL_SECONDS": "1",
}


def hold_run_lock() -> IO[str]:
    """One run at a time per checkout: a second one would kill the first's processes as leftovers."""
    CHAOS.dir.mkdir(parents=True, exist_ok=True)
    lock = (CHAOS.dir / "run.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another chaos run is using {CHAOS.dir}") from None
    return lock  # held until this process exits


def configure(shards: int, clusters: Clusters | None = None) -> None:
    """Before Django loads settings: this process and its children use the chaos stack (its
    shards at their `clusters`' members, if given).

    Every process writes its metrics under one directory (emptied here, so the counters
    describe this run only) and /metrics sums them, those of killed processes included.
    """
    metrics = CHAOS.dir / "metrics"
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir(parents=True)
    env = CHAOS.configure_environment(shards, {**SAGA_ENV, "PROMETHEUS_MULTIPROC_DIR": str(metrics)})
    if clusters is not None:
        clusters.rewrite_map(Path(env["SHARDWALLET_SHARDS_FILE"]))


LOGS = CHAOS.dir / "logs"


def fresh_logs() -> None:
    """The logs directory holds this run's only."""
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)


def programs(*, api_workers: int, celery_workers: int, celery_concurrency: int) -> dict[str, Program]:
    logs = LOGS
    # The services log at INFO (a transfer's retries are then in the worker logs); the harness stays quiet.
    env = {**os.environ, "SHARDWALLET_LOG_LEVEL": "INFO"}
    argvs = {"api": api_command(CHAOS.api_port, api_workers, threads=4)}
    for i in range(1, celery_workers + 1):
        argvs[f"worker-{i}"] = worker_command(celery_concurrency, name=f"chaos-worker-{i}")
    argvs["beat"] = beat_command(CHAOS.stack_dir / "celerybeat-schedule")
    argvs["cdc"] = cdc_command()
    return {name: Program(name, argv, env, logs / f"{name}.log") for name, argv in argvs.items()}


def ports(clusters: Clusters | None = None) -> list[int]:
    members = [p for c in (clusters.shards if clusters else []) for m in c.members for p in (m.pg_port, m.api_port)]
    etcd = [clusters.etcd.client_port, clusters.etcd.peer_port] if clusters else []
    return [CHAOS.redis_port, CHAOS.api_port, CHAOS.audit_http_port, *members, *etcd]


def kill_leftovers() -> int:
    """Kill service processes a previous run left behind (its harness was SIGKILLed, say).

    They are recognised by their environment (this stack's directory), never by name, so
    nothing else on the machine is touched. Servers are stopped by `Devstack.down` instead.
    """
    killed = 0
    for proc in psutil.process_iter(["pid", "name", "environ"]):
        env = proc.info.get("environ") or {}
        name = proc.info.get("name") or ""
        if proc.pid == os.getpid() or name.startswith(("postgres", "redis", "pg_ctl", "runuser")):
            continue
        if env.get("SHARDWALLET_DEVSTACK_DIR") == str(CHAOS.stack_dir):
            try:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            except psutil.NoSuchProcess:
                pass
    return killed


def create_wallets(*, seed: int, per_shard: int) -> tuple[int, str, Wallets]:
    """Two API clients and their wallets, on every shard; returns the paying client's id and key.

    Set up through the services (not timed, not under faults). The other client owns the
    payees that must refuse money (frozen, other currency, its own transfers only) and some
    ordinary ones.
    """
    from apps.accounts.services import api_client_create
    from apps.ledger.models import AcceptsFrom, WalletStatus
    from apps.ledger.services import WalletChanges, wallet_create, wallet_set_status, wallet_update
    from apps.sharding.routing import shard_aliases, shard_map

    rng = random.Random(f"wallets:{seed}")  # noqa: S311 - a reproducible layout, not secrets
    payer_client, key = api_client_create(name="chaos")
    other_client, _ = api_client_create(name="chaos-other")
    payers, others, frozen, foreign, closed, lean = [], [], [], [], [], []
    shard_of: dict[str, str] = {}

    def make(owner: int, currency: str, alias: str) -> str:
        wallet = wallet_create(owner_id=owner, currency=currency, bucket=rng.choice(shard_map().buckets_of(alias)))
        shard_of[str(wallet.id)] = alias
        return str(wallet.id)

    for alias in shard_aliases():
        payers += [make(payer_client.id, "USD", alias) for _ in range(per_shard)]
        lean.append(payers[-1])
        others.append(make(other_client.id, "USD", alias))
        foreign.append(make(other_client.id, "EUR", alias))
        frozen.append(make(other_client.id, "USD", alias))
        wallet_set_status(wallet_id=uuid.UUID(frozen[-1]), status=WalletStatus.FROZEN)
        closed.append(make(other_client.id, "USD", alias))
        restricted = WalletChanges(accepts_from=AcceptsFrom.SAME_CLIENT)
        wallet_update(wallet_id=uuid.UUID(closed[-1]), owner_id=other_client.id, changes=restricted)
        if len(closed) % 2 == 0:
            wallet_set_status(wallet_id=uuid.UUID(closed[-1]), status=WalletStatus.FROZEN)
    return payer_client.id, key, Wallets(payers, others, frozen, foreign, closed, lean, shard_of)
