"""A throw-away stack of our own: shards, Redis, API server, saga workers, beat and the CDC reader.

`make bench` and `make chaos` each run one, on ports and under a directory of their own
(a `StackLayout`), so neither touches `make run`'s stack, the test suite's, nor the other's.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class StackLayout:
    """Where a throw-away stack lives: its directory and ports (control database at `base_port`, shards after it)."""

    dir: Path
    base_port: int
    redis_port: int
    api_port: int
    audit_http_port: int

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def stack_dir(self) -> Path:
        """The servers' data (the devstack directory); logs and reports stay beside it."""
        return self.dir / "stack"

    def write_shard_map(self, shards: int, buckets: int = 1024) -> Path:
        size = buckets // shards
        data = {
            "buckets": buckets,
            "control": {"host": "127.0.0.1", "port": self.base_port, "name": "shardwallet_control"},
            "shards": [
                {"alias": f"shard_{i:02d}", "host": "127.0.0.1", "port": self.base_port + 1 + i, "name": "shardwallet"}
                for i in range(shards)
            ],
            "bucket_ranges": [
                {
                    "first": i * size,
                    "last": buckets - 1 if i == shards - 1 else (i + 1) * size - 1,
                    "shard": f"shard_{i:02d}",
                }
                for i in range(shards)
            ],
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "shards.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def configure_environment(self, shards: int, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Point this process (and every child) at this stack, before Django loads settings."""
        env = {
            "DJANGO_SETTINGS_MODULE": "wallet_project.settings",
            "SHARDWALLET_ENV": "development",  # a throw-away stack on this machine
            "SHARDWALLET_SHARDS_FILE": str(self.write_shard_map(shards)),
            "SHARDWALLET_DEVSTACK_DIR": str(self.stack_dir),
            "SHARDWALLET_REDIS_URL": self.redis_url,
            "SHARDWALLET_LOG_LEVEL": "WARNING",
            "SHARDWALLET_AUDIT_HTTP_PORT": str(self.audit_http_port),
            # The CDC's endpoint lets in auditor accounts only; its reconcile logs in with this one.
            "SHARDWALLET_AUDIT_AUDITORS": f"auditor:{secrets.token_urlsafe(18)}",
            **(extra or {}),
        }
        os.environ.update(env)
        return env

    def reset(self) -> None:
        """Delete the previous run's server data (its servers must be stopped)."""
        if self.stack_dir.exists():
            shutil.rmtree(self.stack_dir)


BENCH = StackLayout(
    dir=ROOT / "var" / "bench", base_port=29400, redis_port=29379, api_port=29080, audit_http_port=29123
)
BENCH_DIR = BENCH.dir
BASE_PORT = BENCH.base_port
REDIS_URL = BENCH.redis_url
API_PORT = BENCH.api_port
AUDIT_HTTP_PORT = BENCH.audit_http_port


def write_shard_map(shards: int, buckets: int = 1024) -> Path:
    return BENCH.write_shard_map(shards, buckets)


def configure_environment(shards: int) -> dict[str, str]:
    return BENCH.configure_environment(shards)


def reset_bench_dir() -> None:
    BENCH.reset()


CELERY = [sys.executable, "-m", "celery", "-A", "wallet_project"]


def api_command(port: int, workers: int, threads: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "wallet_project.wsgi", "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--backlog", "2048",
        *(["--worker-class", "gthread", "--threads", str(threads)] if threads > 1 else []),
    ]  # fmt: skip


def worker_command(concurrency: int, name: str | None = None, queues: str | None = None) -> list[str]:
    return [
        *CELERY, "worker", "-l", "warning", "-c", str(concurrency), "--without-gossip", "--without-mingle",
        "--without-heartbeat", *(["-n", f"{name}@%h"] if name else []), *(["-Q", queues] if queues else []),
    ]  # fmt: skip


def beat_command(schedule: Path) -> list[str]:
    return [*CELERY, "beat", "-l", "warning", "-s", str(schedule)]


def cdc_command() -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), "run_cdc"]


def wait_for_api(url: str, timeout: float, log_hint: Path) -> None:
    """Until GET /health answers 200 (every database and Redis up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310 - our own URL
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"API did not come up; see {log_hint}")


class Services:
    """gunicorn, Celery worker(s) and beat as child processes; logs under var/bench/."""

    def __init__(self, *, api_workers: int, api_threads: int, saga_workers: int, cdc: bool) -> None:
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.cdc = cdc
        self.api_workers = api_workers
        self.api_threads = api_threads
        self.saga_workers = saga_workers

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (BENCH_DIR / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())  # noqa: S603

    def start(self) -> None:
        self._spawn("api", api_command(API_PORT, self.api_workers, self.api_threads))
        self._spawn("worker", worker_command(self.saga_workers))
        # The outbox's dispatcher and the webhook sender, as `make run` has them (their own queue).
        self._spawn("webhooks", worker_command(2, "webhooks", queues="webhooks"))
        self._spawn("beat", beat_command(BENCH_DIR / "celerybeat-schedule"))
        if self.cdc:  # the audit stream, as `make run` has it
            self._spawn("cdc", cdc_command())
        wait_for_api(f"http://127.0.0.1:{API_PORT}", 60, BENCH_DIR / "api.log")
        time.sleep(2)  # let the Celery worker connect

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.processes.items()}

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
