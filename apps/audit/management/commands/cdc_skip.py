from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.audit.models import CdcAction
from apps.audit.operator import file_request
from apps.audit.pgoutput import str_to_lsn
from apps.operators.models import ActionKind
from apps.operators.services import recorded_command


class Command(BaseCommand):
    help = (
        "Ask the CDC reader of SHARD to leave out the one transaction it cannot decode (committed at LSN, as "
        "`cdc_status` shows it) and go on; the transaction is recorded in audit.cdc_gaps."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("shard")
        parser.add_argument("lsn", help="the failing transaction's commit LSN, e.g. 0/1A2B3C4")
        parser.add_argument("--reason", required=True, help="why (kept with the gap, for the auditors)")
        parser.add_argument("--by", default="", help="who asks (default: the login name)")
        parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the reader (0: do not)")

    def handle(self, *args: Any, shard: str, lsn: str, reason: str, by: str, wait: float, **options: Any) -> None:
        with recorded_command(
            ActionKind.CDC_SKIP, shard=shard, subject=f"transaction at {lsn}", reason=reason
        ) as record:
            record.detail = file_request(
                shard, CdcAction.SKIP, reason=reason, by=by, wait=wait, commit_lsn=str_to_lsn(lsn)
            )
        self.stdout.write(record.detail)
