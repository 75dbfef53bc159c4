"""Auditors' read-only SQL over HTTP, served by the CDC process from its embedded chDB.

chDB lets one process open a data path, and the CDC process holds it; so that process
also answers queries, on 127.0.0.1 only, speaking the part of ClickHouse's HTTP
interface that clickhouse-connect, curl and `manage.py audit_sql` use:

- `GET /` and `GET /ping`: `Ok.`
- `GET /?query=...` or `POST /` with the query in the body (or `?query=` plus a body,
  which ClickHouse appends to it); `default_format` (else TabSeparated, as ClickHouse),
  or a FORMAT clause in the query; `param_<name>` for `{name:Type}` parameters.
- Errors as ClickHouse sends them: the `Code: N. DB::Exception: ...` text, the code in
  `X-ClickHouse-Exception-Code`, an HTTP status by kind (403 for writes).

Queries run on a chDB connection opened with `readonly=1`: ClickHouse itself refuses
every write, DDL, settings change and file or URL table function.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
_CODE = re.compile(r"Code: (\d+)\.")
# ClickHouse's HTTP status for the common error codes.
_STATUS_BY_CODE = {
    164: HTTPStatus.FORBIDDEN,  # READONLY
    497: HTTPStatus.FORBIDDEN,  # ACCESS_DENIED
    62: HTTPStatus.BAD_REQUEST,  # SYNTAX_ERROR
    47: HTTPStatus.BAD_REQUEST,  # UNKNOWN_IDENTIFIER
    46: HTTPStatus.BAD_REQUEST,  # UNKNOWN_FUNCTION
    73: HTTPStatus.BAD_REQUEST,  # UNKNOWN_FORMAT
    456: HTTPStatus.BAD_REQUEST,  # UNKNOWN_QUERY_PARAMETER
    60: HTTPStatus.NOT_FOUND,  # UNKNOWN_TABLE
    81: HTTPStatus.NOT_FOUND,  # UNKNOWN_DATABASE
}
_CONTENT_TYPES = {
    "json": "application/json; charset=UTF-8",
    "jsoneachrow": "application/x-ndjson; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8",
    "csvwithnames": "text/csv; charset=UTF-8",
}


class QueryEngine:
    """Runs one read-only query on chDB; thread-safe (chDB serialises what it must)."""

    def __init__(self, chdb_path: str) -> None:
        import chdb

        self._conn = chdb.connect(f"{chdb_path}?readonly=1")

    def run(self, query: str, fmt: str, params: dict[str, str]) -> bytes:
        result = self._conn.query(query, fmt, params=params)
        return bytes(result.bytes()) if hasattr(result, "bytes") else bytes(result)


class _Handler(BaseHTTPRequestHandler):
    server: AuditHttpServer
    protocol_version = "HTTP/1.1"  # keep-alive, as clickhouse-connect's pool expects

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("audit http " + format, *args)

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        try:
            body = self._read_body()
        except ValueError as exc:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{exc}\n".encode())
            self.close_connection = True
            return
        encoding = (self.headers.get("Content-Encoding") or "identity").lower()
        if encoding != "identity":
            # Compressed bodies are what clients send for INSERT data; this endpoint takes none.
            self._error(164, "Code: 164. DB::Exception: the audit endpoint is read-only. (READONLY)")
            return
        self._handle(body)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts: list[bytes] = []
            size = 0
            while True:
                chunk_size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if chunk_size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                size += chunk_size
                if size > MAX_BODY_BYTES:
                    raise ValueError("request body too large")
                parts.append(self.rfile.read(chunk_size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length else b""

    def _handle(self, body: bytes) -> None:
        url = urlsplit(self.path)
        if url.path not in ("/", "/ping", "/query"):
            self._send(HTTPStatus.NOT_FOUND, b"There is no handle " + url.path.encode() + b"\n")
            return
        args = dict(parse_qsl(url.query, keep_blank_values=True))
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
        fmt = args.get("default_format") or "TabSeparated"
        params = {k[len("param_") :]: v for k, v in args.items() if k.startswith("param_")}
        query_id = args.get("query_id") or str(uuid.uuid4())
        try:
            data = self.server.engine.run(query, fmt, params)
        except Exception as exc:
            message = str(exc).strip()
            match = _CODE.search(message)
            self._error(int(match.group(1)) if match else 1000, message)
            return
        self._send(
            HTTPStatus.OK,
            data,
            content_type=_CONTENT_TYPES.get(fmt.lower(), "text/plain; charset=UTF-8"),
            headers={
                "X-ClickHouse-Format": fmt,
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Timezone": "UTC",
                "X-ClickHouse-Summary": '{"read_rows":"0","read_bytes":"0","written_rows":"0","written_bytes":"0"}',
            },
        )

    def _error(self, code: int, message: str) -> None:
        status = _STATUS_BY_CODE.get(code, HTTPStatus.INTERNAL_SERVER_ERROR)
        self._send(status, (message + "\n").encode(), headers={"X-ClickHouse-Exception-Code": str(code)})

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


class AuditHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, engine: QueryEngine, host: str = "127.0.0.1") -> None:
        self.engine = engine
        super().__init__((host, port), _Handler)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="audit-http", daemon=True)
        thread.start()
        return thread
