from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.common.roles import exec_role, worker_argv


class Command(BaseCommand):
    help = "Run a Celery saga worker (the `worker` role); replaces this process. `worker_ready` checks it."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--concurrency", type=int, default=settings.WORKER_CONCURRENCY, help="SHARDWALLET_WORKER_CONCURRENCY"
        )
        parser.add_argument("--name", help="Celery node name (default celery@<hostname>)")
        parser.add_argument("--log-level", default="info")
        parser.add_argument(
            "--queues",
            help="Celery queues to consume (default: the saga's). `webhooks`: the webhook worker, kept apart so"
            " that slow endpoints never delay a transfer",
        )

    def handle(
        self, *args: Any, concurrency: int, name: str | None, log_level: str, queues: str | None, **options: Any
    ) -> None:
        exec_role(worker_argv(concurrency, name, log_level, queues))
