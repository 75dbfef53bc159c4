from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.status import health_component, read_status, running_status, status_file
from apps.sharding.routing import shard_aliases


class Command(BaseCommand):
    help = (
        "Exit 0 if this host's CDC process is ready: running, streaming every shard of the map, none"
        " stopped nor too far behind (as /health's audit_cdc). --live: only that the process is running."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--live", action="store_true", help="liveness only: the process updated its status lately")

    def handle(self, *args: Any, live: bool, **options: Any) -> None:
        status = running_status()
        if status is None:
            last = read_status()
            if last is None:
                raise CommandError(f"no CDC status at {status_file()}: run_cdc has not started here")
            age = time.time() - last["updated_at"]
            raise CommandError(f"the CDC process {last['pid']} is not running (status {age:.0f}s old)")
        if live:
            self.stdout.write(f"live: process {status['pid']}")
            return
        missing = sorted(set(shard_aliases()) - set(status["shards"]))
        component = health_component()
        problems = [component["error"]] if not component["ok"] else []
        if missing:
            problems.append(f"no stream yet for {', '.join(missing)}")
        if problems:
            raise CommandError("not ready: " + "; ".join(problems))
        self.stdout.write(f"ready: streaming {', '.join(sorted(status['shards']))}")
