from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.queries import QUERIES, bind
from apps.audit.store import AuditStoreUnavailable, connect_reader
from apps.audit.tables import query_table


class Command(BaseCommand):
    help = "Run a named audit query (--list shows them) and print the result as a table."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", nargs="?", choices=sorted(QUERIES), help="the query")
        parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a query parameter")
        parser.add_argument("--list", action="store_true", help="list the queries and their parameters")
        parser.add_argument("--sql", action="store_true", help="print the query's SQL instead of running it")
        parser.add_argument("--port", type=int, help="the CDC process's HTTP port (embedded mode)")

    def handle(self, *args: Any, name: str | None, param: list[str], list: bool, sql: bool, port: int | None,
               **options: Any) -> None:  # fmt: skip
        if list or name is None:
            for query in QUERIES.values():
                params = " ".join(f"--param {p}=..." for p in query.params)
                self.stdout.write(f"{query.name} {params}\n    {query.description}")
                for p, help_text in query.params.items():
                    self.stdout.write(f"    {p}: {help_text}")
            return
        query = QUERIES[name]
        if sql:
            self.stdout.write(query.sql.strip())
            return
        given = {}
        for item in param:
            key, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"--param takes NAME=VALUE, got {item!r}")
            given[key] = value
        try:
            values = bind(query, given)
            table = query_table(connect_reader(port), query.sql, values)
        except (ValueError, AuditStoreUnavailable) as exc:
            raise CommandError(str(exc)) from exc
        except Exception as exc:
            raise CommandError(str(exc).strip()) from exc
        self.stdout.write(table)
