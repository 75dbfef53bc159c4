from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.transfers.checks import check_ledger


class Command(BaseCommand):
    help = "Verify balances, entries, transfers and conservation across all shards; exit 1 on any violation."

    def handle(self, *args: Any, **options: Any) -> None:
        report = check_ledger()
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(report.transfers_by_status.items())) or "none"
        self.stdout.write(
            f"wallets {report.wallets}, entries {report.entries}, transfers {report.transfers} ({statuses}),"
            f" holds {report.holds}, refunds {report.refunds}"
        )
        for currency, totals in sorted(report.totals.items()):
            self.stdout.write(
                f"{currency}: balances {totals.balances} = deposits {totals.deposits} - withdrawals"
                f" {totals.withdrawals} - in flight {totals.in_flight} - held {totals.held}"
            )
        if report.ok:
            self.stdout.write("ledger OK")
            return
        for violation in report.violations:
            self.stderr.write(f"VIOLATION: {violation}")
        if report.violation_count > len(report.violations):
            self.stderr.write(f"... and {report.violation_count - len(report.violations)} more")
        raise CommandError(f"{report.violation_count} violation(s)")
