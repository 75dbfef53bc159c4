"""Auditors' read-only SQL over HTTP, served by the CDC process from its embedded chDB.

chDB lets one process open a data path, and the CDC process holds it; so that process
also answers queries, on 127.0.0.1 only, speaking the part of ClickHouse's HTTP
interface that clickhouse-connect, curl and `manage.py audit_sql` use:

- `GET /` and `GET /ping`: `Ok.` (health checks; nothing runs).
- `GET /?query=...` or `POST /` with the query in the body (or `?query=` plus a body,
  which ClickHouse appends to it); `default_format` (else TabSeparated, as ClickHouse),
  or a FORMAT clause in the query; `param_<name>` for `{name:Type}` parameters.
- Errors as ClickHouse sends them: the `Code: N. DB::Exception: ...` text, the code in
  `X-ClickHouse-Exception-Code`, an HTTP status by kind (403 for writes).

Every query is, in this order:
1. logged in: an auditor account (`AUDIT_AUDITORS`, apps/audit/auditors.py) by HTTP basic
   auth (clickhouse-connect's way), `X-ClickHouse-User`/`X-ClickHouse-Key` or the
   `user`/`password` parameters; else 401, ClickHouse code 516, before anything is parsed;
2. given one of `AUDIT_QUERY_MAX_CONCURRENT` chDB connections, or refused at once (503, code
   202, TOO_MANY_SIMULTANEOUS_QUERIES);
3. checked (apps/audit/query_gate.py: one read statement that reads only the store) and run
   on that connection, opened with `readonly=1` and the per-query limits in its connection
   string (time, memory, result rows, threads): a query can change neither (ClickHouse
   refuses SET and SETTINGS in readonly mode);
4. recorded in `audit.query_log` (apps/audit/query_log.py), refused ones too.

What one connection can cost is bounded before any of that: at most
`AUDIT_HTTP_MAX_CONNECTIONS` connections are served at once (one more is answered 503 and
closed), a socket idle or stalled for `AUDIT_HTTP_TIMEOUT_SECONDS` is closed, a body is at most
1 MiB (a malformed or negative `Content-Length`, or a malformed or oversized chunk, is a 400
before anything is buffered), a result at most `AUDIT_QUERY_MAX_RESULT_BYTES`, and a
`query_id` (echoed in a header) is printable ASCII without spaces.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from apps.audit import query_gate, store
from apps.audit.auditors import authenticate
from apps.audit.query_log import QueryLog, QueryLogEntry

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
# A chunk-size line (hex size and extensions) or a trailer line is never longer than this.
_MAX_CHUNK_LINE_BYTES = 1024
_MAX_TRAILER_LINES = 100
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,8}")
_QUERY_ID = re.compile(r"[\x21-\x7e]{1,128}")
BAD_ARGUMENTS = 36
AUTHENTICATION_FAILED = 516
TOO_MANY_SIMULTANEOUS_QUERIES = 202
_CODE = re.compile(r"Code: (\d+)\.")
# ClickHouse's HTTP status for the common error codes.
_STATUS_BY_CODE = {
    164: HTTPStatus.FORBIDDEN,  # READONLY
    497: HTTPStatus.FORBIDDEN,  # ACCESS_DENIED
    446: HTTPStatus.FORBIDDEN,  # FUNCTION_NOT_ALLOWED
    516: HTTPStatus.UNAUTHORIZED,  # AUTHENTICATION_FAILED
    202: HTTPStatus.SERVICE_UNAVAILABLE,  # TOO_MANY_SIMULTANEOUS_QUERIES
    62: HTTPStatus.BAD_REQUEST,  # SYNTAX_ERROR
    47: HTTPStatus.BAD_REQUEST,  # UNKNOWN_IDENTIFIER
    46: HTTPStatus.BAD_REQUEST,  # UNKNOWN_FUNCTION
    73: HTTPStatus.BAD_REQUEST,  # UNKNOWN_FORMAT
    456: HTTPStatus.BAD_REQUEST,  # UNKNOWN_QUERY_PARAMETER
    36: HTTPStatus.BAD_REQUEST,  # BAD_ARGUMENTS
    60: HTTPStatus.NOT_FOUND,  # UNKNOWN_TABLE
    81: HTTPStatus.NOT_FOUND,  # UNKNOWN_DATABASE
}
_CONTENT_TYPES = {
    "json": "application/json; charset=UTF-8",
    "jsoneachrow": "application/x-ndjson; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8",
    "csvwithnames": "text/csv; charset=UTF-8",
}
NO_AUDITORS = (
    "the audit endpoint has no auditor account, and runs no query without one: set SHARDWALLET_AUDIT_AUDITORS="
    "name:secret[,name2:secret2] or SHARDWALLET_AUDIT_AUDITORS_FILE (one name:secret a line; a secret may be "
    "sha256:<hex>) for run_cdc (`make run` makes one for its stack)"
)


@dataclass(frozen=True)
class QueryLimits:
    """What one auditor query may use; ClickHouse stops it (an error, nothing partial) past any."""

    max_seconds: float
    max_memory_bytes: int
    max_result_rows: int
    max_threads: int
    max_result_bytes: int

    @classmethod
    def from_settings(cls) -> QueryLimits:
        return cls(
            max_seconds=settings.AUDIT_QUERY_MAX_SECONDS,
            max_memory_bytes=settings.AUDIT_QUERY_MAX_MEMORY_BYTES,
            max_result_rows=settings.AUDIT_QUERY_MAX_RESULT_ROWS,
            max_threads=settings.AUDIT_QUERY_MAX_THREADS,
            max_result_bytes=settings.AUDIT_QUERY_MAX_RESULT_BYTES,
        )

    def connection_settings(self) -> dict[str, str]:
        """The chDB connection string's settings: this connection's session only (the CDC's writer
        keeps its own), and readonly=1, under which no query can change the others."""
        return {
            "max_execution_time": f"{self.max_seconds:g}",
            "timeout_overflow_mode": "throw",
            "max_memory_usage": str(self.max_memory_bytes),
            "max_result_rows": str(self.max_result_rows),
            "max_result_bytes": str(self.max_result_bytes),
            "result_overflow_mode": "throw",
            "max_threads": str(self.max_threads),
            # chDB (local mode) allows them by default: addressToLine() and the like read the binary.
            "allow_introspection_functions": "0",
            "readonly": "1",
        }


class TooManyQueries(Exception):
    code = TOO_MANY_SIMULTANEOUS_QUERIES


class QueryLogBehind(TooManyQueries):
    """The store has not taken the query log's rows: no query runs unlogged meanwhile."""


@dataclass(frozen=True)
class QueryResult:
    data: bytes
    result_rows: int
    read_rows: int


class QueryEngine:
    """Runs auditor queries on chDB: one read-only connection per query that may run at once,
    each opened with the limits. Concurrent queries on separate connections run in parallel."""

    def __init__(self, chdb_path: str, *, limits: QueryLimits | None = None, max_concurrent: int | None = None) -> None:
        import chdb

        self.limits = limits or QueryLimits.from_settings()
        self.max_concurrent = max_concurrent or settings.AUDIT_QUERY_MAX_CONCURRENT
        connection_string = f"{chdb_path}?{urlencode(self.limits.connection_settings())}"
        self._idle = [chdb.connect(connection_string) for _ in range(self.max_concurrent)]
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """An idle connection for one query, or TooManyQueries at once: a query never waits for one."""
        with self._lock:
            if not self._idle:
                raise TooManyQueries(
                    f"Code: {TOO_MANY_SIMULTANEOUS_QUERIES}. DB::Exception: Too many simultaneous queries. "
                    f"Maximum: {self.max_concurrent}. (TOO_MANY_SIMULTANEOUS_QUERIES)"
                )
            conn = self._idle.pop()
        try:
            yield conn
        finally:
            with self._lock:
                self._idle.append(conn)

    def run(self, query: str, fmt: str, params: dict[str, str]) -> QueryResult:
        with self.connection() as conn:
            sql = query_gate.canonical(conn, query)
            query_gate.check(sql)
            result = conn.query(sql, fmt, params=params)
        data = bytes(result.bytes()) if hasattr(result, "bytes") else bytes(result)
        return QueryResult(data, int(result.rows_read()), int(result.storage_rows_read()))

    def close(self) -> None:
        with self._lock:
            for conn in self._idle:
                conn.close()
            self._idle.clear()


class _Unauthenticated(Exception):
    pass


class _BadBody(Exception):
    """A body that is refused before it is buffered: its HTTP status and why."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: AuditHttpServer
    protocol_version = "HTTP/1.1"  # keep-alive, as clickhouse-connect's pool expects

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.socket_timeout)  # idle or stalled: closed

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("audit http " + format, *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Not the request line: its URL may carry a password (?user=&password=).
        log.debug("audit http %s %s %s", self.command, urlsplit(self.path).path, code)

    def do_GET(self) -> None:
        args = self._route()
        if args is None:
            return
        if not args.get("query", "").strip():
            self._send(HTTPStatus.OK, b"Ok.\n")  # /ping, or / with no query: health checks
            return
        auditor = self._authenticate(args)
        if auditor is not None:
            self._query(auditor, args, args["query"])

    def do_POST(self) -> None:
        args = self._route()
        if args is None:
            return
        auditor = self._authenticate(args)  # before the body is even read
        if auditor is None:
            return
        try:
            body = self._read_body()
        except _BadBody as exc:
            self._send(exc.status, f"{exc}\n".encode())
            self.close_connection = True  # what is left of the body is never read
            return
        encoding = (self.headers.get("Content-Encoding") or "identity").lower()
        if encoding != "identity":
            # Compressed bodies are what clients send for INSERT data; this endpoint takes none.
            self._error(164, "Code: 164. DB::Exception: the audit endpoint is read-only. (READONLY)")
            return
        query = args.get("query", "")
        if body:
            try:
                text = body.decode()
            except UnicodeDecodeError:
                # Binary data after a query is an INSERT's payload: this endpoint takes none.
                self._error(164, "Code: 164. DB::Exception: the audit endpoint is read-only. (READONLY)")
                return
            query = f"{query}\n{text}" if query else text
        if not query.strip():
            self._send(HTTPStatus.OK, b"Ok.\n")
            return
        self._query(auditor, args, query)

    def _route(self) -> dict[str, str] | None:
        """The URL's parameters, or None (answered 404) for a path ClickHouse does not serve."""
        url = urlsplit(self.path)
        if url.path not in ("/", "/ping", "/query"):
            self._send(HTTPStatus.NOT_FOUND, b"There is no handle " + url.path.encode() + b"\n")
            self.close_connection = True  # a POST body is left unread
            return None
        return dict(parse_qsl(url.query, keep_blank_values=True))

    def _read_body(self) -> bytes:
        """The body, read only as far as it is well formed and within MAX_BODY_BYTES."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunks()
        declared = (self.headers.get("Content-Length") or "0").strip()
        if not declared.isdigit():
            raise _BadBody(HTTPStatus.BAD_REQUEST, "Content-Length must be a non-negative integer")
        length = int(declared)
        if length > MAX_BODY_BYTES:
            raise _BadBody(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            raise _BadBody(HTTPStatus.BAD_REQUEST, "the body is shorter than its Content-Length")
        return body

    def _read_line(self) -> bytes:
        line = self.rfile.readline(_MAX_CHUNK_LINE_BYTES + 1)
        if len(line) > _MAX_CHUNK_LINE_BYTES:
            raise _BadBody(HTTPStatus.BAD_REQUEST, "a chunk-size or trailer line is too long")
        return line

    def _read_chunks(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            size_text = self._read_line().split(b";")[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise _BadBody(HTTPStatus.BAD_REQUEST, "malformed chunk size")
            chunk_size = int(size_text, 16)
            if chunk_size == 0:
                for _ in range(_MAX_TRAILER_LINES):
                    if self._read_line() in (b"\r\n", b"\n", b""):
                        return b"".join(parts)
                raise _BadBody(HTTPStatus.BAD_REQUEST, "too many trailer lines")
            size += chunk_size
            if size > MAX_BODY_BYTES:
                raise _BadBody(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
            chunk = self.rfile.read(chunk_size)
            if len(chunk) < chunk_size:
                raise _BadBody(HTTPStatus.BAD_REQUEST, "a chunk is shorter than its size")
            parts.append(chunk)
            self._read_line()

    def _credentials(self, args: dict[str, str]) -> tuple[str, str]:
        """(user, password) as ClickHouse takes them: one way only, of three."""
        authorization = self.headers.get("Authorization")
        header_user, header_key = self.headers.get("X-ClickHouse-User"), self.headers.get("X-ClickHouse-Key")
        param_user, param_password = args.pop("user", None), args.pop("password", None)
        given = [
            authorization is not None,
            header_user is not None or header_key is not None,
            param_user is not None or param_password is not None,
        ]
        if sum(given) > 1:
            raise _Unauthenticated(
                "Invalid authentication: use one of HTTP basic auth, the X-ClickHouse-User/X-ClickHouse-Key "
                "headers or the user/password parameters"
            )
        if authorization is not None:
            scheme, _, encoded = authorization.partition(" ")
            try:
                user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                sep = ""
            if scheme.lower() != "basic" or not sep:
                raise _Unauthenticated("Invalid authentication: the Authorization header is not HTTP basic auth")
            return user, password
        if given[1]:
            return header_user or "default", header_key or ""
        if given[2]:
            return param_user or "default", param_password or ""
        raise _Unauthenticated(
            "the audit endpoint needs an auditor's credentials: HTTP basic auth (curl -u name:secret), the "
            "X-ClickHouse-User/X-ClickHouse-Key headers or the user/password parameters"
        )

    def _authenticate(self, args: dict[str, str]) -> str | None:
        """The auditor's name; or None, answered 401 (code 516) and nothing parsed or run."""
        user = ""
        try:
            user, password = self._credentials(args)
            if not authenticate(self.server.auditors, user, password):
                raise _Unauthenticated(
                    f"{user}: Authentication failed: password is incorrect, or there is no user with such name"
                )
        except _Unauthenticated as exc:
            log.warning(
                "audit endpoint refused a login",
                extra={"auditor": user, "client_address": self.client_address[0], "reason": str(exc)},
            )
            self._error(
                AUTHENTICATION_FAILED,
                f"Code: {AUTHENTICATION_FAILED}. DB::Exception: {exc}. (AUTHENTICATION_FAILED)",
                headers={"WWW-Authenticate": 'Basic realm="shardwallet audit", charset="UTF-8"'},
            )
            self.close_connection = True  # a POST body is left unread
            return None
        return user

    def _query(self, auditor: str, args: dict[str, str], query: str) -> None:
        fmt = args.get("default_format") or "TabSeparated"
        params = {k[len("param_") :]: v for k, v in args.items() if k.startswith("param_")}
        query_id = args.get("query_id") or str(uuid.uuid4())
        if not _QUERY_ID.fullmatch(query_id):
            # It is echoed in a response header: a line break there would be a header of the client's.
            message = "query_id must be 1 to 128 printable ASCII characters without spaces"
            self._error(BAD_ARGUMENTS, f"Code: {BAD_ARGUMENTS}. DB::Exception: {message}. (BAD_ARGUMENTS)")
            return
        entry = QueryLogEntry(
            time=datetime.now(tz=UTC),
            query_id=query_id,
            auditor=auditor,
            client_address=self.client_address[0],
            query=query,
            parameters=params,
            format=fmt,
        )
        started = time.monotonic()
        try:
            if self.server.query_log.full():
                raise QueryLogBehind(
                    f"Code: {TOO_MANY_SIMULTANEOUS_QUERIES}. DB::Exception: the audit query log is behind "
                    f"({self.server.query_log.pending()} rows not yet stored); queries wait until it is not. "
                    "(TOO_MANY_SIMULTANEOUS_QUERIES)"
                )
            result = self.server.engine.run(query, fmt, params)
        except Exception as exc:
            message = str(exc).strip()
            match = _CODE.search(message)
            code = exc.code if isinstance(exc, TooManyQueries | query_gate.QueryRefused) else None
            code = code or (int(match.group(1)) if match else 1000)
            entry.duration_ms = round((time.monotonic() - started) * 1000)
            entry.error_code, entry.error = code, message
            if isinstance(exc, QueryLogBehind):  # a row more would only lengthen the backlog
                log.warning("audit endpoint refused a query: the query log is behind", extra={"auditor": auditor})
            else:
                self.server.query_log.record(entry)
            self._error(code, message)
            return
        entry.duration_ms = round((time.monotonic() - started) * 1000)
        entry.result_rows, entry.result_bytes, entry.read_rows = result.result_rows, len(result.data), result.read_rows
        self.server.query_log.record(entry)
        summary = {
            "read_rows": str(result.read_rows),
            "read_bytes": "0",
            "written_rows": "0",
            "written_bytes": "0",
            "result_rows": str(result.result_rows),
            "result_bytes": str(len(result.data)),
        }
        self._send(
            HTTPStatus.OK,
            result.data,
            content_type=_CONTENT_TYPES.get(fmt.lower(), "text/plain; charset=UTF-8"),
            headers={
                "X-ClickHouse-Format": fmt,
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Timezone": "UTC",
                "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":")),
            },
        )

    def _error(self, code: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        status = _STATUS_BY_CODE.get(code, HTTPStatus.INTERNAL_SERVER_ERROR)
        self._send(
            status, (message + "\n").encode(), headers={"X-ClickHouse-Exception-Code": str(code), **(headers or {})}
        )

    def _send(
        self,
        status: HTTPStatus,
        data: bytes,
        *,
        content_type: str = "text/plain; charset=UTF-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


_TOO_MANY_CONNECTIONS = b"too many connections at once\n"
TOO_MANY_CONNECTIONS_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=UTF-8\r\n"
    + f"Content-Length: {len(_TOO_MANY_CONNECTIONS)}\r\nConnection: close\r\n\r\n".encode()
    + _TOO_MANY_CONNECTIONS
)


class AuditHttpServer(ThreadingHTTPServer):
    """The endpoint, its auditor accounts and its query log; refuses to exist without an account."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        port: int,
        engine: QueryEngine,
        host: str = "127.0.0.1",
        *,
        auditors: Mapping[str, str] | None = None,
        query_log: QueryLog | None = None,
    ) -> None:
        accounts = settings.AUDIT_AUDITORS if auditors is None else auditors
        if not accounts:
            raise ImproperlyConfigured(NO_AUDITORS)
        self.auditors = dict(accounts)
        self.engine = engine
        self.socket_timeout = settings.AUDIT_HTTP_TIMEOUT_SECONDS
        self.connection_slots = threading.BoundedSemaphore(settings.AUDIT_HTTP_MAX_CONNECTIONS)
        # Its own chDB connection (store.writer_client opens one more on the CDC's path): the
        # sink's batches and the log's inserts never queue behind each other.
        self.query_log = query_log or QueryLog(
            store.writer_client,
            flush_seconds=settings.AUDIT_QUERY_LOG_FLUSH_SECONDS,
            max_pending=settings.AUDIT_QUERY_LOG_MAX_PENDING,
        )
        super().__init__((host, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, up to the cap; past it, 503 and closed at once (no thread)."""
        if not self.connection_slots.acquire(blocking=False):
            with suppress(OSError):
                request.sendall(TOO_MANY_CONNECTIONS_ANSWER)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connection_slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connection_slots.release()

    def start(self) -> threading.Thread:
        self.query_log.start()
        thread = threading.Thread(target=self.serve_forever, name="audit-http", daemon=True)
        thread.start()
        return thread

    def server_close(self) -> None:
        """Stop listening, store the query log's last rows, close the connections."""
        super().server_close()
        self.query_log.stop()
        self.engine.close()
