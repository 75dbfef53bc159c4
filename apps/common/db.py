"""A cursor for hot statements: server-side parameter binding and prepared statements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.db import connections


@contextmanager
def fast_cursor(alias: str) -> Iterator[psycopg.Cursor]:
    """A psycopg cursor on `alias`'s Django connection (so inside its transaction, if any).

    Django's cursors bind parameters client-side, quoting each value into the SQL text; for
    the few statements every transfer runs, sending parameters apart is cheaper, and psycopg
    then prepares a statement after a few uses, which saves PostgreSQL parsing and planning.
    Errors come out as Django's exceptions (IntegrityError...), as from ORM queries.
    """
    connection = connections[alias]
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor
