"""The benchmark's own stack: shards, Redis, API server, saga workers and beat on their own ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"
BASE_PORT = 29400
REDIS_URL = "redis://127.0.0.1:29379/0"
API_PORT = 29080
AUDIT_HTTP_PORT = 29123


def write_shard_map(shards: int, buckets: int = 1024) -> Path:
    size = buckets // shards
    data = {
        "buckets": buckets,
        "control": {"host": "127.0.0.1", "port": BASE_PORT, "name": "shardwallet_control"},
        "shards": [
            {"alias": f"shard_{i:02d}", "host": "127.0.0.1", "port": BASE_PORT + 1 + i, "name": "shardwallet"}
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
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / "shards.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def configure_environment(shards: int) -> dict[str, str]:
    """Point this process (and every child) at the bench stack, before Django loads settings."""
    env = {
        "DJANGO_SETTINGS_MODULE": "wallet_project.settings",
        "SHARDWALLET_SHARDS_FILE": str(write_shard_map(shards)),
        "SHARDWALLET_DEVSTACK_DIR": str(BENCH_DIR / "stack"),
        "SHARDWALLET_REDIS_URL": REDIS_URL,
        "SHARDWALLET_LOG_LEVEL": "WARNING",
        "SHARDWALLET_AUDIT_HTTP_PORT": str(AUDIT_HTTP_PORT),
    }
    os.environ.update(env)
    return env


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
        celery = [sys.executable, "-m", "celery", "-A", "wallet_project"]
        self._spawn(
            "api",
            [sys.executable, "-m", "gunicorn", "wallet_project.wsgi", "--bind", f"127.0.0.1:{API_PORT}",
             "--workers", str(self.api_workers), "--backlog", "2048",
             *(["--worker-class", "gthread", "--threads", str(self.api_threads)] if self.api_threads > 1 else [])],
        )  # fmt: skip
        self._spawn(
            "worker",
            [*celery, "worker", "-l", "warning", "-c", str(self.saga_workers), "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
        )  # fmt: skip
        schedule = BENCH_DIR / "celerybeat-schedule"
        self._spawn("beat", [*celery, "beat", "-l", "warning", "-s", str(schedule)])
        if self.cdc:  # the audit stream, as `make run` has it
            self._spawn("cdc", [sys.executable, str(ROOT / "manage.py"), "run_cdc"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{API_PORT}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            raise RuntimeError(f"API did not come up; see {BENCH_DIR / 'api.log'}")
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


def reset_bench_dir() -> None:
    stack = BENCH_DIR / "stack"
    if stack.exists():
        shutil.rmtree(stack)
