"""Clients of the audit store, one API (clickhouse-connect) for both backends.

- Embedded (default): chDB under `AUDIT_DIR/chdb`, opened by the CDC process only
  (`writer_client`); everyone else reads through that process's HTTP endpoint
  (`reader_client`).
- Server: a ClickHouse server when `CLICKHOUSE_URL` is set, for writes and reads alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from django.conf import settings


def embedded() -> bool:
    return not settings.CLICKHOUSE_URL


def chdb_path() -> Path:
    return Path(settings.AUDIT_DIR) / "chdb"


def backend_name() -> str:
    return "chdb" if embedded() else "clickhouse"


def server_address() -> str:
    """CLICKHOUSE_URL without its credentials, for logs and messages."""
    url = urlsplit(settings.CLICKHOUSE_URL)
    return f"{url.scheme}://{url.hostname}:{url.port or 8123}{url.path}"


def writer_client() -> Any:
    """The CDC process's client: chDB in process, or the ClickHouse server."""
    if embedded():
        path = chdb_path()
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(interface="chdb", path=str(path))
    return clickhouse_connect.get_client(dsn=settings.CLICKHOUSE_URL)


def reader_client(port: int | None = None) -> Any:
    """Auditors' client: the CDC process's read-only endpoint, or the ClickHouse server."""
    if embedded():
        return clickhouse_connect.get_client(
            host="127.0.0.1", port=port or settings.AUDIT_HTTP_PORT, interface="http", connect_timeout=3
        )
    return clickhouse_connect.get_client(dsn=settings.CLICKHOUSE_URL)


class AuditStoreUnavailable(RuntimeError):
    """The audit store does not answer; the message says what to start."""


def connect_reader(port: int | None = None) -> Any:
    """`reader_client`, turning a refused connection into advice."""
    try:
        return reader_client(port)
    except Exception as exc:
        if embedded():
            where = f"127.0.0.1:{port or settings.AUDIT_HTTP_PORT}"
            raise AuditStoreUnavailable(
                f"the embedded audit store is served by the CDC process at {where}, which does not answer "
                f"({type(exc).__name__}); start it with `manage.py run_cdc` (`make run` does)"
            ) from exc
        raise AuditStoreUnavailable(f"ClickHouse at {server_address()} does not answer: {exc}") from exc
