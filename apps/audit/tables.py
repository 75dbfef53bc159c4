"""Plain-text tables for the auditor commands."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

_OWN_FORMAT = re.compile(r"\bFORMAT\s+\w+\s*;?\s*$", re.IGNORECASE)


def cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(columns), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def query_table(client: Any, sql: str, parameters: dict[str, str] | None = None) -> str:
    """Run `sql` and render it. JSONCompact keeps the column names of an empty result
    and 64-bit integers as exact strings; a query with its own FORMAT prints as is."""
    if _OWN_FORMAT.search(sql):
        return client.raw_query(sql, parameters=parameters).decode(errors="replace").rstrip("\n")
    raw = client.raw_query(sql, parameters=parameters, fmt="JSONCompact")
    try:
        data = json.loads(raw, parse_float=Decimal)
        columns = [c["name"] for c in data["meta"]]
        rows = data["data"]
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace").rstrip("\n")
    return render(columns, rows)
