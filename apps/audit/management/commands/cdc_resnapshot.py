from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.audit.models import CdcAction
from apps.audit.operator import file_request
from apps.operators.models import ActionKind
from apps.operators.services import recorded_command


class Command(BaseCommand):
    help = (
        "Ask the CDC reader of SHARD to take a new slot and snapshot after its slot was lost. Rows the snapshot "
        "no longer has are marked deleted; the WAL range the store never read is recorded in audit.cdc_gaps."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("shard")
        parser.add_argument("--reason", required=True, help="why (kept with the gap, for the auditors)")
        parser.add_argument("--by", default="", help="who asks (default: the login name)")
        parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the reader (0: do not)")

    def handle(self, *args: Any, shard: str, reason: str, by: str, wait: float, **options: Any) -> None:
        with recorded_command(ActionKind.CDC_RESNAPSHOT, shard=shard, subject="audit stream", reason=reason) as record:
            record.detail = file_request(shard, CdcAction.RESNAPSHOT, reason=reason, by=by, wait=wait)
        self.stdout.write(record.detail)
