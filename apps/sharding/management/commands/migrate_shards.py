from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from apps.audit.reader import captured_tables, ensure_publication
from apps.sharding.db_roles import grant_roles
from apps.sharding.mapstore import seed_control_map
from apps.sharding.routing import refresh_shard_map, shard_aliases, shard_map
from apps.sharding.shard_setup import seed_shard


class Command(BaseCommand):
    help = (
        "Apply migrations to the control database and to every shard; seed the shard map on first run."
        " Every shard is tried; exits 1 naming those that failed (the `migrate` role)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity = options.get("verbosity", 1)
        call_command("migrate", database="default", interactive=False, verbosity=max(verbosity - 1, 0))
        grant_roles("default")
        if seed_control_map(settings.SHARD_MAP) and verbosity:
            self.stdout.write("shard map seeded from the shard map file")
        current = refresh_shard_map()
        failed: dict[str, str] = {}
        for alias in shard_aliases():
            if verbosity:
                self.stdout.write(f"migrating {alias}")
            try:
                call_command("migrate", database=alias, interactive=False, verbosity=max(verbosity - 1, 0))
                seed_shard(alias, shard_map())
                grant_roles(alias)
                # As the tables' owner: the CDC's login only reads it.
                ensure_publication(
                    shard_map().shards[alias], settings.AUDIT_PUBLICATION, captured_tables(settings.AUDIT_TABLES)
                )
            except Exception as exc:  # go on: one unreachable shard must not hide the others' state
                failed[alias] = f"{type(exc).__name__}: {exc}".strip()
                self.stderr.write(f"{alias}: migration FAILED: {failed[alias]}")
        if failed:
            raise CommandError(f"{len(failed)} shard(s) not migrated: {', '.join(sorted(failed))}")
        if verbosity:
            self.stdout.write(f"shard map epoch {current.epoch}")
