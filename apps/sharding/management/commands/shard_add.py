from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, transaction

from apps.sharding.devstack import Devstack, DevstackError
from apps.sharding.mapstore import register_connections, save_server
from apps.sharding.routing import refresh_shard_map
from apps.sharding.shard_setup import seed_shard
from apps.sharding.shardmap import ALIAS_PATTERN, MEMBER_PATTERN, DatabaseServer


class Command(BaseCommand):
    help = (
        "Add a shard server to the map: start it (a local server of the stack), migrate it and register it,"
        " with no bucket yet. Declare it in the shard map file, or give --host/--port/--name."
        " Every process, the audit stream included, follows it without a restart; move_buckets fills it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("alias", help="shard_NN")
        parser.add_argument("--host")
        parser.add_argument("--port", type=int)
        parser.add_argument("--name", help="database name")
        parser.add_argument("--user", default="postgres")
        parser.add_argument("--password", default="")
        parser.add_argument(
            "--member",
            action="append",
            default=[],
            metavar="HOST:PORT",
            help="another server of its replicated cluster (repeat for each); connections take the one that"
            " accepts writes",
        )

    def handle(self, *args: Any, alias: str, **options: Any) -> None:
        if not ALIAS_PATTERN.match(alias):
            raise CommandError(f"{alias!r} is not a shard alias like shard_04")
        server = self._server(alias, options)
        if server.is_local:
            try:
                self.stdout.write(
                    Devstack(settings.SHARD_MAP, settings.DEVSTACK_DIR, settings.REDIS_URL).ensure_server(server)
                )
            except DevstackError as exc:
                raise CommandError(str(exc)) from exc
        with transaction.atomic(using="default"):
            save_server(server)
            with connections["default"].cursor() as cursor:
                # A new epoch: every process re-reads the map and so learns of the server.
                cursor.execute("UPDATE sharding_map_state SET epoch = epoch + 1, changed_at = now() WHERE id = 1")
                if cursor.rowcount != 1:
                    raise CommandError("the control database has no shard map yet: run migrate_shards first")
        current = refresh_shard_map()
        register_connections(current)
        call_command("migrate", database=alias, interactive=False, verbosity=0)
        seed_shard(alias, current)
        self.stdout.write(
            f"{alias} added at {server.host}:{server.port}/{server.name} (map epoch {current.epoch}); no bucket yet:"
            f" move_buckets FIRST LAST --to {alias}"
        )

    def _server(self, alias: str, options: dict[str, Any]) -> DatabaseServer:
        declared = settings.SHARD_MAP.shards.get(alias)
        if options["host"] or options["port"] or options["name"]:
            if not (options["host"] and options["port"] and options["name"]):
                raise CommandError("give --host, --port and --name together")
            bad = [m for m in options["member"] if not MEMBER_PATTERN.match(m)]
            if bad:
                raise CommandError(f"--member takes HOST:PORT, got {', '.join(bad)}")
            return DatabaseServer(
                alias, options["host"], options["port"], options["name"], options["user"], options["password"],
                members=tuple(options["member"]),
            )  # fmt: skip
        if declared is None:
            raise CommandError(
                f"{alias} is not declared in {settings.SHARDS_FILE}: add it there or give --host/--port/--name"
            )
        return declared
