"""The CDC process (`manage.py run_cdc`) as a real subprocess, with its own store, slot and port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import clickhouse_connect
import psycopg
from django.conf import settings

from apps.audit.pgoutput import str_to_lsn
from apps.audit.reader import conninfo, drop_slot
from tests.factories import free_port
from tests.polling import wait_until

AUDIT_PORTS_PER_WORKER = 100


def free_audit_port() -> int:
    """A free port above the configured AUDIT_HTTP_PORT (env-chosen per developer), in a range of
    this test worker's own: the workers' AUDIT_HTTP_PORTs are only 10 apart, and ranges that
    overlapped let two workers' CDC processes pick the same port between the check and the
    bind (a test failed with "Address already in use")."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    low = settings.AUDIT_HTTP_PORT + 1 + index * AUDIT_PORTS_PER_WORKER
    return free_port(low, low + AUDIT_PORTS_PER_WORKER)


class CdcProcess:
    """`run_cdc` in its own process group; `kill` is a SIGKILL, `restart` keeps store and slot."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.dir = Path(settings.DEVSTACK_DIR) / "audit-tests" / tag
        self.slot_prefix = f"audit_test_{tag}"
        self._slot = ""
        self.publication = f"audit_test_{tag}"
        self.port = free_audit_port()
        self.log = self.dir / "cdc.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.dir.mkdir(parents=True)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test",
            "SHARDWALLET_AUDIT_DIR": str(self.dir),
            "SHARDWALLET_AUDIT_SLOT_PREFIX": self.slot_prefix,
            "SHARDWALLET_AUDIT_PUBLICATION": self.publication,
            "SHARDWALLET_AUDIT_HTTP_PORT": str(self.port),
            "SHARDWALLET_AUDIT_BATCH_MAX_SECONDS": "0.05",
            **(extra or {}),
        }

    def start(self, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> CdcProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(settings.BASE_DIR / "manage.py"), "run_cdc", *args],
                env=self.env(env),
                start_new_session=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_connected()
        return self

    @property
    def slot(self) -> str:
        """The store's slot name (its prefix and the store's id), as the process reported it."""
        if not self._slot:
            try:
                self._slot = json.loads((self.dir / "cdc_status.json").read_text())["slot"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                return ""
        return self._slot

    def status(self) -> dict[str, Any] | None:
        try:
            status = json.loads((self.dir / "cdc_status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if self.process is None or status["pid"] != self.process.pid:
            return None  # a previous process's file
        return status

    def wait_connected(self, shards: list[str] | None = None, timeout: float = 60) -> None:
        shards = shards or settings.SHARD_MAP.aliases

        def connected() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"run_cdc exited with {self.process.returncode}: {self.log_text()}")
            status = self.status()
            # A shard the process has not picked up yet is not in its status at all.
            return bool(status) and all(status["shards"].get(a, {}).get("connected") for a in shards)

        try:
            wait_until(connected, timeout, "the CDC process to connect to every shard")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log ends:\n{self.log_text()[-3000:]}") from None

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def confirmed_positions(self, timeout: float = 10) -> dict[str, int]:
        """Each shard's slot position confirmed by the last process, once no process streams from it:
        the server re-sends exactly the transactions committed at or after it."""
        positions = {}
        for alias in settings.SHARD_MAP.aliases:
            with psycopg.connect(conninfo(settings.SHARD_MAP.shards[alias]), autocommit=True) as conn:

                def released(conn: psycopg.Connection[Any] = conn) -> Any:
                    return conn.execute(
                        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                        " WHERE slot_name = %s AND NOT active",
                        [self.slot],
                    ).fetchone()

                (lsn,) = wait_until(released, timeout, f"the slot on {alias} to be released")
            positions[alias] = str_to_lsn(lsn)
        return positions

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def client(self) -> Any:
        """A reader client of this process's endpoint, logged in with the test stack's auditor account."""
        login = settings.AUDIT_LOGIN
        return clickhouse_connect.get_client(
            host="127.0.0.1", port=self.port, interface="http", username=login.user, password=login.password
        )

    def cleanup_files(self) -> None:
        """Stop the process and remove its store, leaving the shards' slots alone (a copy's are another's)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def cleanup(self) -> None:
        """Stop the process; drop its slots and publications so no shard keeps WAL for them."""
        self.stop()
        for alias in settings.SHARD_MAP.aliases:
            server = settings.SHARD_MAP.shards[alias]
            try:
                if self.slot:
                    drop_slot(server, self.slot)
                with psycopg.connect(conninfo(server), autocommit=True) as conn:
                    conn.execute(f'DROP PUBLICATION IF EXISTS "{self.publication}"')
            except psycopg.OperationalError:
                pass  # a shard a test left stopped: the throw-away stack goes with it
        shutil.rmtree(self.dir, ignore_errors=True)
