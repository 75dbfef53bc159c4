from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit import store as audit_store
from apps.common.bootstrap import admin_credentials, audit_login, demo_api_key
from apps.common.supervision import Program, Supervisor, SupervisorGaveUp, supervisor_state_file
from apps.sharding.devstack import Devstack, DevstackError


class Command(BaseCommand):
    help = "Bring the local stack up, migrate, and serve the API until Ctrl-C; then stop what was started."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
        parser.add_argument("--keep-stack", action="store_true", help="leave PostgreSQL and Redis running on exit")
        parser.add_argument("--no-cdc", action="store_true", help="do not start the audit CDC process (run_cdc)")

    def handle(self, *args: Any, port: int, workers: int, keep_stack: bool, no_cdc: bool, **options: Any) -> None:
        stack = Devstack(settings.SHARD_MAP, settings.DEVSTACK_DIR, settings.REDIS_URL)
        try:
            for line in stack.up():
                self.stdout.write(line)
        except DevstackError as exc:
            if not keep_stack:
                stack.down()  # do not leave half a stack running
            raise CommandError(str(exc)) from exc
        try:
            self._serve(port, workers, cdc=not no_cdc)
        finally:
            if not keep_stack:
                for line in stack.down():
                    self.stdout.write(line)

    def _serve(self, port: int, workers: int, *, cdc: bool) -> None:
        call_command("migrate_shards", verbosity=0)
        call_command("ensure_roles", verbosity=0)
        if settings.STATIC_ROOT:
            call_command("collectstatic", interactive=False, verbosity=0)
        key = demo_api_key()
        # Before run_cdc starts: it reads the stack's auditor account from DEVSTACK_DIR.
        auditor = audit_login() if cdc and audit_store.embedded() else None
        username, password = admin_credentials()
        # gunicorn and Celery run several processes: each writes its metrics here and /metrics sums them.
        # Emptied at each start, so counters describe this run only.
        metrics_dir = settings.METRICS_DIR
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"],
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        if cdc:
            env["SHARDWALLET_AUDIT_CDC_EXPECTED"] = "1"  # /health then reports the CDC's lag
        # The same role commands as the container image and the supervisord configuration.
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        programs = [
            Program("api", [*manage, "run_api", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)], env),
            Program("saga worker", [*manage, "run_worker", "--concurrency", str(workers)], env),
            # Beat and the webhook worker at warning: they run tasks every second, which at info
            # would be two lines a second each.
            Program("beat", [*manage, "run_beat", "--log-level", "warning"], env),
            # Webhooks on their own worker: a slow endpoint never holds a saga worker.
            Program(
                "webhook worker",
                [*manage, "run_worker", "--queues", "webhooks", "--concurrency", "2", "--log-level", "warning"],
                env,
            ),
        ]
        if cdc:
            # Change data capture into the audit store; it also serves auditors' SQL.
            programs.append(Program("cdc", [*manage, "run_cdc"], env))
        supervisor = Supervisor(programs, supervisor_state_file(), lambda line: self.stderr.write(f"serve: {line}"))
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        # Before anything starts: the programs run in sessions of their own, out of reach of the
        # terminal's signals, so serve must live to stop them (closing the terminal included).
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, stop)
        try:
            supervisor.start_all()
            self._announce(port, workers, cdc, key, auditor, username, password)
            while not stopping:
                supervisor.poll()  # a process that died is started again, after a backoff
                time.sleep(0.5)
        except SupervisorGaveUp as exc:
            raise CommandError(str(exc)) from exc
        finally:
            supervisor.stop_all()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _announce(
        self, port: int, workers: int, cdc: bool, key: str, auditor: tuple[str, str] | None, username: str,
        password: str,
    ) -> None:  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        audit = ""
        if cdc and audit_store.embedded():
            login = f"user {auditor[0]}  password {auditor[1]}, " if auditor else ""
            audit = (
                f"  audit:      CDC into ClickHouse; auditors' SQL at http://127.0.0.1:{settings.AUDIT_HTTP_PORT}"
                f"   ({login}make audit-sql Q=...)\n"
            )
        elif cdc:
            audit = (
                "  audit:      CDC into ClickHouse at CLICKHOUSE_URL; auditors read with"
                " SHARDWALLET_CLICKHOUSE_AUDITOR_URL\n"
            )
        self.stdout.write(
            f"\nshardwallet is running\n"
            f"  API:        {base}/v1/   (docs {base}/v1/docs/, health {base}/health, metrics {base}/metrics)\n"
            f"  saga:       {workers} Celery worker process(es) and beat (sweeper) over {settings.REDIS_URL}\n"
            f"  webhooks:   a worker of its own (queue `webhooks`); local receivers allowed in development\n"
            f"{audit}"
            f"  demo key:   {key}\n"
            f"  admin:      {base}/admin/   user {username}  password {password}\n"
            f"  operations: {base}/admin/operations/   (stalled & parked transfers, shard map)\n"
            f"  try:        curl -H 'Authorization: Bearer {key}' {base}/v1/wallets\n"
            f"A process that dies is restarted (serve logs it; /metrics counts it). Ctrl-C stops everything.\n"
        )
