from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.operators.models import ActionOutcome
from apps.operators.services import operator_redrive_transfer


class Command(BaseCommand):
    help = "Un-park an in-flight transfer and trigger its saga again; recorded in the operators' trail."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("transfer_id", type=uuid.UUID)
        parser.add_argument("--reason", required=True, help="why (kept in the operators' trail)")

    def handle(self, *args: Any, transfer_id: uuid.UUID, reason: str, **options: Any) -> None:
        record = operator_redrive_transfer(actor=None, transfer_id=transfer_id, reason=reason)
        if record.outcome != ActionOutcome.SUCCEEDED:
            raise CommandError(f"transfer {transfer_id}: {record.detail}")
        self.stdout.write(f"re-driving transfer {transfer_id} (operator action {record.id})")
