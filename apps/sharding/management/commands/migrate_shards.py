from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from apps.sharding.mapstore import seed_control_map
from apps.sharding.routing import refresh_shard_map, shard_aliases, shard_map
from apps.sharding.shard_setup import seed_shard


class Command(BaseCommand):
    help = "Apply migrations to the control database and to every shard; seed the shard map on first run."

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity = options.get("verbosity", 1)
        call_command("migrate", database="default", interactive=False, verbosity=max(verbosity - 1, 0))
        if seed_control_map(settings.SHARD_MAP) and verbosity:
            self.stdout.write("shard map seeded from the shard map file")
        current = refresh_shard_map()
        for alias in shard_aliases():
            if verbosity:
                self.stdout.write(f"migrating {alias}")
            call_command("migrate", database=alias, interactive=False, verbosity=max(verbosity - 1, 0))
            seed_shard(alias, shard_map())
        if verbosity:
            self.stdout.write(f"shard map epoch {current.epoch}")
