from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.store import AuditStoreUnavailable, connect_reader
from apps.audit.tables import query_table


class Command(BaseCommand):
    help = "Run one ClickHouse SQL query on the audit store (read-only) and print the result as a table."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("sql", help='e.g. "SELECT * FROM audit.currency_totals"')
        parser.add_argument("--format", help="print the server's own output in this FORMAT (CSV, JSONEachRow...)")
        parser.add_argument("--port", type=int, help="the CDC process's HTTP port (embedded mode)")

    def handle(self, *args: Any, sql: str, format: str | None, port: int | None, **options: Any) -> None:
        try:
            client = connect_reader(port)
            if format:
                sys.stdout.buffer.write(client.raw_query(sql, fmt=format))
                sys.stdout.flush()
                return
            table = query_table(client, sql)
        except AuditStoreUnavailable as exc:
            raise CommandError(str(exc)) from exc
        except Exception as exc:
            raise CommandError(str(exc).strip()) from exc
        self.stdout.write(table)
