from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.accounts.services import api_client_create


class Command(BaseCommand):
    help = "Create an API client and print its key (shown only once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--rate-limit", type=int, help="requests per second (0: none); default: the deployment's")
        parser.add_argument("--rate-burst", type=int, help="requests at once after a quiet spell")

    def handle(self, *args: Any, name: str, rate_limit: int | None, rate_burst: int | None, **options: Any) -> None:
        client, key = api_client_create(name=name, rate_limit_per_second=rate_limit, rate_limit_burst=rate_burst)
        self.stderr.write(f"created API client {client.id} ({client.name}); key:")
        self.stdout.write(key)
