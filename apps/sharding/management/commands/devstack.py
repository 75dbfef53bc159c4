from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.sharding.devstack import Devstack, DevstackError


def current_devstack() -> Devstack:
    return Devstack(settings.SHARD_MAP, settings.DEVSTACK_DIR, settings.REDIS_URL)


class Command(BaseCommand):
    requires_system_checks: list[str] = []  # runs before any database exists
    help = "Start, stop or show the local stack: one PostgreSQL server per shard, the control database, Redis."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["up", "down", "status"])
        parser.add_argument("--purge", action="store_true", help="with down: delete the stack's data too")

    def handle(self, *args: Any, action: str, purge: bool, **options: Any) -> None:
        stack = current_devstack()
        try:
            if action == "up":
                lines = stack.up()
            elif action == "down":
                lines = stack.down(purge=purge) or ["nothing to stop"]
            else:
                lines = [f"{name}: {state}" for name, state in stack.status().items()]
        except DevstackError as exc:
            raise CommandError(str(exc)) from exc
        for line in lines:
            self.stdout.write(line)
