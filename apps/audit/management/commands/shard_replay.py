from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.replay import ReplayConflict, ReplayRefused, abandoned_changes, latest_generation, replay
from apps.audit.store import AuditStoreUnavailable, connect_reader
from apps.operators.models import ActionKind
from apps.operators.services import recorded_command


class Command(BaseCommand):
    help = (
        "Apply again on SHARD, restored to an earlier point in time, the changes its new history lost: the ones "
        "cdc_resnapshot kept in audit.abandoned_changes, in commit order. Repeats are no-ops; a row the shard "
        "changed since stops it (a conflict). Run it before the shard takes traffic again."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("shard")
        parser.add_argument("--reason", required=True, help="why (kept in the operators' trail)")
        parser.add_argument("--generation", type=int, help="the store's generation to replay (default: the newest)")
        parser.add_argument(
            "--skip", action="append", default=[], metavar="LSN",
            help="leave out the transaction that committed at LSN (a number, as lost_transactions lists it, or X/Y)",
        )  # fmt: skip
        parser.add_argument("--dry-run", action="store_true", help="check and count, then roll back")
        parser.add_argument("--port", type=int, help="the CDC process's HTTP port (embedded mode)")

    def handle(
        self, *args: Any, shard: str, reason: str, generation: int | None, skip: list[str], dry_run: bool,
        port: int | None, **options: Any,
    ) -> None:  # fmt: skip
        with recorded_command(ActionKind.SHARD_REPLAY, shard=shard, subject="lost changes", reason=reason) as record:
            try:
                client = connect_reader(port)
                generation = generation if generation is not None else latest_generation(client, shard)
                if generation is None:
                    raise CommandError(f"the audit store holds no abandoned changes of {shard}")
                skipped = {_lsn(value) for value in skip}
                changes = [c for c in abandoned_changes(client, shard, generation) if c.commit_lsn not in skipped]
                if not changes:
                    raise CommandError(f"no abandoned changes of {shard} in generation {generation} in the audit store")
                report = replay(shard, generation, changes, dry_run=dry_run)
            except (AuditStoreUnavailable, ReplayRefused, ReplayConflict) as exc:
                raise CommandError(str(exc)) from exc
            record.detail = report.summary() + (f"; left out: {', '.join(skip)}" if skip else "")
        self.stdout.write(record.detail)


def _lsn(value: str) -> int:
    """An LSN as lost_transactions prints it (a number) or as PostgreSQL does (X/Y)."""
    try:
        if "/" in value:
            high, low = value.split("/")
            return (int(high, 16) << 32) | int(low, 16)
        return int(value)
    except ValueError as exc:
        raise CommandError(f"--skip takes an LSN (a number or X/Y), got {value!r}") from exc
