from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.common.worker_readiness import FRESH_SECONDS, fresh_workers


class Command(BaseCommand):
    help = (
        "Exit 0 if a saga worker on this host is consuming (connected to the broker within the last"
        f" {FRESH_SECONDS:.0f} s), else 1: a readiness or liveness check for orchestrators."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", help="this worker's node name only, e.g. celery@host (default: any)")

    def handle(self, *args: Any, name: str | None, **options: Any) -> None:
        ready, stale = fresh_workers(name)
        if not ready:
            detail = f"stale: {', '.join(stale)}" if stale else "none has started consuming"
            raise CommandError(f"no saga worker{' ' + name if name else ''} is ready on this host ({detail})")
        self.stdout.write(f"ready: {', '.join(ready)}")
