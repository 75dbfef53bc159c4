from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.accounts.services import api_client_create


class Command(BaseCommand):
    help = "Create an API client and print its key (shown only once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        client, key = api_client_create(name=name)
        self.stderr.write(f"created API client {client.id} ({client.name}); key:")
        self.stdout.write(key)
