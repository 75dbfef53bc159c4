from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.reconcile import reconcile
from apps.audit.store import AuditStoreUnavailable, connect_reader


class Command(BaseCommand):
    help = (
        "Compare the audit store with the shards at a consistent point of each shard (per bucket and table: rows,"
        " money and a content hash; rows of the buckets that differ; transfers' debits, credits and refunds);"
        " exit 1 with a report on any difference. Recorded gaps in the stream are printed as warnings."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--wait", type=float, default=10.0,
            help="seconds to wait, per round, for the audit store to hold each shard's point",
        )  # fmt: skip
        parser.add_argument("--port", type=int, help="the CDC process's HTTP port (embedded mode)")

    def handle(self, *args: Any, wait: float, port: int | None, **options: Any) -> None:
        try:
            report = reconcile(connect_reader(port), wait=wait)
        except AuditStoreUnavailable as exc:
            raise CommandError(str(exc)) from exc
        for gap in report.gaps:
            self.stderr.write(f"warning: history is incomplete: {gap.describe()}")
        if report.ok:
            self.stdout.write(
                f"reconcile: OK: {report.wallets} wallets, {report.entries} entries and {report.transfers} finished"
                f" transfers in {report.buckets} buckets agree with the shards"
            )
            return
        for line in report.differences:
            self.stdout.write(line)
        raise CommandError(f"reconcile: {len(report.differences)} difference(s) between the shards and the audit store")
