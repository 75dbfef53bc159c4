"""Real Celery worker processes for end-to-end and fault tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import redis
from django.conf import settings

from apps.sharding.routing import alias_for_id
from apps.transfers.models import Transfer

_TASK_EVENT = re.compile(
    r"Task (?P<name>[\w.]+)\[(?P<id>[0-9a-f-]+)\] (?P<event>received|succeeded|retry|raised)"
    r"(?: in \S+s: (?P<result>.*))?"
)


class TaskEvent(NamedTuple):
    name: str
    id: str
    event: str  # received, succeeded, retry or raised
    result: str | None  # what a task that succeeded returned, as the worker printed it


class Worker:
    """`celery worker` (optionally with embedded beat) in its own process group."""

    def __init__(
        self,
        *,
        beat: bool = False,
        env: dict[str, str] | None = None,
        concurrency: int = 2,
        wait_ready: bool = True,
        queues: str | None = None,
    ) -> None:
        self.name = f"w{uuid.uuid4().hex[:8]}"
        self.log = Path(settings.DEVSTACK_DIR) / f"celery-{self.name}.log"
        args = [
            sys.executable, "-m", "celery", "-A", "wallet_project", "worker", "-l", "info",
            "-c", str(concurrency), "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat", *(["-Q", queues] if queues else []),
        ]  # fmt: skip
        if beat:
            args += ["-B", "-s", str(Path(settings.DEVSTACK_DIR) / f"beat-{self.name}")]
        full_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test", **(env or {})}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                args, env=full_env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
            )
        if wait_ready:
            self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.exists() and " ready." in self.log.read_text():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early: {self.log_text()}")
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"worker not ready in {timeout}s: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def task_events(self) -> list[TaskEvent]:
        """The tasks' lives as the worker logged them (Celery's own INFO lines), in order."""
        events = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                message = json.loads(line).get("message", "")
            except ValueError:
                continue  # a line the worker is still writing
            match = _TASK_EVENT.match(message)
            if match:
                events.append(TaskEvent(match["name"], match["id"], match["event"], match["result"]))
        return events

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def wait_exit(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)


def flush_redis() -> None:
    redis.Redis.from_url(settings.REDIS_URL).flushdb()


def wait_terminal(transfer_ids: list[uuid.UUID], timeout: float = 60) -> dict[uuid.UUID, Transfer]:
    """Poll the shards until every transfer is completed or failed; fail the test otherwise."""
    deadline = time.monotonic() + timeout
    pending = set(transfer_ids)
    done: dict[uuid.UUID, Transfer] = {}
    while pending and time.monotonic() < deadline:
        for transfer_id in list(pending):
            transfer = Transfer.objects.using(alias_for_id(transfer_id)).get(id=transfer_id)
            if transfer.is_terminal:
                done[transfer_id] = transfer
                pending.discard(transfer_id)
        if pending:
            time.sleep(0.1)
    if pending:
        states = {t: Transfer.objects.using(alias_for_id(t)).get(id=t).status for t in list(pending)[:5]}
        raise AssertionError(f"{len(pending)} transfer(s) not terminal after {timeout}s, e.g. {states}")
    return done


def wait_tasks_done(worker: Worker, task_ids: Iterable[str], timeout: float = 20) -> None:
    """Wait until `worker` has logged the end of every one of these tasks (succeeded, or raised
    with no retry left): an empty queue is not enough, the worker prefetches and runs them later."""
    pending = set(task_ids)
    deadline = time.monotonic() + timeout
    while pending:
        pending -= {e.id for e in worker.task_events() if e.event in ("succeeded", "raised")}
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} task(s) not done after {timeout}s, e.g. {sorted(pending)[:3]}")
        time.sleep(0.05)
