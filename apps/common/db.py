"""A cursor for hot statements: server-side parameter binding and prepared statements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.db import connections

PREPARE_AFTER = 2  # uses of one statement text on a connection before psycopg prepares it


@contextmanager
def fast_cursor(alias: str) -> Iterator[psycopg.Cursor]:
    """A psycopg cursor on `alias`'s Django connection (so inside its transaction, if any).

    Django's cursors bind parameters client-side, quoting each value into the SQL text (for
    arrays, element by element in Python); for the few statements every transfer runs,
    sending parameters apart is cheaper, and psycopg prepares a statement on its
    PREPARE_AFTER-th use on a connection, which saves PostgreSQL parsing and planning.
    (Django turns preparing off for its own cursors, which bind client-side and never
    prepare anyway; this turns it on for the connection's server-binding cursors.)
    Errors come out as Django's exceptions (IntegrityError...), as from ORM queries.
    """
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        raw.prepare_threshold = PREPARE_AFTER
    with connection.wrap_database_errors, psycopg.Cursor(raw) as cursor:
        yield cursor


# Above this many rows (by the planner's statistics) an operator's page shows a table's
# estimated size instead of counting it: an exact count of millions of rows is a scan per view.
EXACT_COUNT_UP_TO = 100_000
