from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.transfers.services import transfer_redrive


class Command(BaseCommand):
    help = "Un-park an in-flight transfer and trigger its saga again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("transfer_id", type=uuid.UUID)

    def handle(self, *args: Any, transfer_id: uuid.UUID, **options: Any) -> None:
        if not transfer_redrive(transfer_id):
            raise CommandError(f"transfer {transfer_id} is not in flight (or does not exist)")
        self.stdout.write(f"re-driving transfer {transfer_id}")
