from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand

from apps.sharding.routing import shard_aliases


class Command(BaseCommand):
    help = "Apply migrations to the control database and to every shard."

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity = options.get("verbosity", 1)
        for alias in ["default", *shard_aliases()]:
            if verbosity:
                self.stdout.write(f"migrating {alias}")
            call_command("migrate", database=alias, interactive=False, verbosity=max(verbosity - 1, 0))
