from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.sharding.ids import InvalidId, bucket_of, parse_id
from apps.sharding.routing import shard_map


class Command(BaseCommand):
    help = "Print the bucket and shard of a wallet or transfer id (computed from the id, no lookup)."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="+")

    def handle(self, *args: Any, ids: list[str], **options: Any) -> None:
        for raw in ids:
            try:
                bucket = bucket_of(parse_id(raw))
                alias = shard_map().alias_for_bucket(bucket)
            except (InvalidId, ValueError) as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"{raw} bucket {bucket} {alias}")
