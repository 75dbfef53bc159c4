from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.common.roles import beat_argv, exec_role


class Command(BaseCommand):
    help = "Run Celery beat, the sweeper's clock (the `beat` role; exactly one per deployment); replaces this process."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--log-level", default="info")

    def handle(self, *args: Any, log_level: str, **options: Any) -> None:
        schedule = settings.DEVSTACK_DIR / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        exec_role(beat_argv(schedule, log_level))
