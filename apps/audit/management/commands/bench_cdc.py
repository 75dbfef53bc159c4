from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.audit.bench import run_bench
from apps.sharding.devstack import Devstack


class Command(BaseCommand):
    help = "Measure the CDC reader's throughput (row changes/s) on a scratch database of the first shard's server."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--changes", type=int, default=100_000, help="row changes in the backlog")
        parser.add_argument("--per-tx", type=int, default=50, help="deposits per transaction (2 changes each)")

    def handle(self, *args: Any, changes: int, per_tx: int, **options: Any) -> None:
        stack = Devstack(settings.SHARD_MAP, settings.DEVSTACK_DIR, settings.REDIS_URL)
        was_running = all(c.is_running() for c in stack.clusters())
        stack.up()
        try:
            shard = settings.SHARD_MAP.shards[settings.SHARD_MAP.aliases[0]]
            result = run_bench(shard, changes=changes, per_tx=per_tx)
        finally:
            if not was_running:
                stack.down()
        self.stdout.write(
            f"cdc bench: {result.changes} row changes in {result.transactions} transactions of {2 * per_tx}\n"
            f"  decode only (pgoutput -> Python values):          {result.decode_rate:10,.0f} changes/s\n"
            f"  end to end (stream, decode, chDB insert, confirm): {result.end_to_end_rate:10,.0f} changes/s"
            f" ({result.end_to_end_seconds:.2f} s)"
        )
