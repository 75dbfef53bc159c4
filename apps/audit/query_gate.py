"""Which auditor queries the embedded endpoint runs: one read statement, reading nothing but
the store.

chDB's `readonly=1` refuses writes, DDL, settings changes and the table functions that reach
outside (url, file, remote, postgresql, s3...) in a SELECT. Some things pass it in chDB,
which is ClickHouse in "local" mode: the `file()` *function* reads any file the process can
(its secrets, /proc/self/environ), `INTO OUTFILE` writes one, `KILL QUERY` stops the CDC's
own inserts, DESCRIBE of a table function reaches out; chDB also runs several
`;`-separated statements in one call. So the endpoint first has ClickHouse itself parse
the query (`formatQuerySingleLine`, which refuses more than one statement) and checks that
canonical text, which has no comments, heredocs or stray quoting left to hide anything in:

- it starts with SELECT, WITH, EXPLAIN, SHOW, DESCRIBE or EXISTS;
- it calls neither `file(...)` nor chDB's `python(...)`;
- it has no `INTO OUTFILE`;
- it does not DESCRIBE a table function: that path skips the readonly check and reads the
  source to infer a structure (`DESCRIBE TABLE url(...)` fetches the URL,
  `DESCRIBE TABLE postgresql(...)` connects to the server).

The canonical text is what then runs, so what was checked is what is executed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

READONLY = 164
ALLOWED_STATEMENTS = frozenset({"SELECT", "WITH", "EXPLAIN", "SHOW", "DESCRIBE", "DESC", "EXISTS"})
# Lower-cased; ClickHouse's `file` is case-sensitive, chDB's `python` table function is not.
REFUSED_FUNCTIONS = frozenset({"file", "python"})

# A token of ClickHouse's canonical SQL: a quoted literal or identifier (backslash escapes,
# or a doubled quote), a word, or one other character.
_TOKEN = re.compile(
    r"""
      (?P<string>'(?:[^'\\]|\\.|'')*')
    | (?P<quoted>`(?:[^`\\]|\\.|``)*`|"(?:[^"\\]|\\.|"")*")
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


class QueryRefused(Exception):
    """A query the endpoint does not run; `code` is ClickHouse's (READONLY)."""

    code = READONLY

    def __init__(self, reason: str) -> None:
        super().__init__(f"Code: {READONLY}. DB::Exception: {reason}. (READONLY)")


def _literal(text: str) -> str:
    """`text` as a ClickHouse string literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\0", "\\0")
    return f"'{escaped}'"


class QueryNotParsed(Exception):
    """ClickHouse's parser refused the query (its message, without the wrapping query)."""


def canonical(conn: Any, query: str) -> str:
    """The query as ClickHouse's parser re-writes it; a syntax error, or a second statement, raises."""
    try:
        result = conn.query(f"SELECT formatQuerySingleLine({_literal(query)})", "RawBLOB")
    except Exception as exc:
        # "...: In scope SELECT formatQuerySingleLine('<the query>'). (SYNTAX_ERROR)": the
        # auditor sent the query, not our wrapping of it.
        head, wrapped, tail = str(exc).strip().partition(" In scope SELECT formatQuerySingleLine(")
        name = re.search(r"\((\w+)\)$", tail)
        raise QueryNotParsed(head.rstrip(" :.") + "." + (f" ({name.group(1)})" if wrapped and name else "")) from exc
    return bytes(result.bytes()).decode()


def _tokens(sql: str) -> Iterator[tuple[str, str]]:
    """(kind, text) of each token but spaces; a quoted identifier comes as a word, unquoted."""
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup or "other"
        text = match.group()
        if kind == "space":
            continue
        if kind == "quoted":
            yield "word", text[1:-1]
        else:
            yield kind, text


def check(sql: str) -> None:
    """Raise QueryRefused unless canonical `sql` is one read statement that reads only the store."""
    tokens = list(_tokens(sql))
    words = [text for kind, text in tokens if kind == "word"]
    statement = words[0].upper() if words else ""
    if statement not in ALLOWED_STATEMENTS:
        raise QueryRefused(
            f"Cannot execute query in readonly mode: the audit endpoint runs "
            f"{', '.join(sorted(ALLOWED_STATEMENTS))} statements only, not {statement or 'this'}"
        )
    if statement in ("DESCRIBE", "DESC"):
        # DESCRIBE of a table function skips the readonly check and reads the source to infer
        # its structure: url() fetches, postgresql() connects. A subquery's are checked.
        target = tokens[2:] if len(tokens) > 1 and tokens[1][1].upper() == "TABLE" else tokens[1:]
        if len(target) > 1 and target[0][0] == "word" and target[1][1] == "(":
            raise QueryRefused(
                f"Cannot execute query in readonly mode: DESCRIBE of a table function ({target[0][1]}) reads "
                "outside the audit store"
            )
    for (kind, text), (_, following) in pairwise(tokens):
        if kind == "word" and following == "(" and text.lower() in REFUSED_FUNCTIONS:
            raise QueryRefused(f"Cannot execute query in readonly mode: {text}() reads outside the audit store")
        if kind == "word" and text.upper() == "INTO" and following.upper() == "OUTFILE":
            raise QueryRefused("Cannot execute query in readonly mode: INTO OUTFILE writes a file")
