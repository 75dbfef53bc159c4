"""Clients of the audit store, one API (clickhouse-connect) for both backends.

- Embedded (default): chDB under `AUDIT_DIR/chdb`, opened by the CDC process only
  (`writer_client`); everyone else reads through that process's HTTP endpoint
  (`reader_client`).
- Server: a ClickHouse server when `CLICKHOUSE_URL` is set. The CDC process writes with
  that DSN; auditors' tools read with their own, `CLICKHOUSE_AUDITOR_URL`, a read-only
  ClickHouse user, and refuse to run without it rather than borrow the writer's.

Either way auditors log in: to the embedded endpoint with an auditor account
(`AUDIT_LOGIN`, apps/audit/auditors.py), to the server with the auditor DSN's user.
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


def server_address(dsn: str | None = None) -> str:
    """A DSN (CLICKHOUSE_URL by default) without its credentials, for logs and messages."""
    url = urlsplit(settings.CLICKHOUSE_URL if dsn is None else dsn)
    return f"{url.scheme}://{url.hostname}:{url.port or 8123}{url.path}"


def writer_client() -> Any:
    """The CDC process's client: chDB in process, or the ClickHouse server."""
    if embedded():
        path = chdb_path()
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(interface="chdb", path=str(path))
    return clickhouse_connect.get_client(dsn=settings.CLICKHOUSE_URL)


class AuditStoreUnavailable(RuntimeError):
    """The audit store does not answer, or may not be asked; the message says what to do."""


class AuditorAccessNotConfigured(AuditStoreUnavailable):
    """Server mode without an auditor DSN of its own: the tools refuse to read with the writer's."""


def _dsn_user(dsn: str) -> str:
    return urlsplit(dsn).username or "default"


def auditor_dsn() -> str:
    """The DSN auditors read a ClickHouse server with: CLICKHOUSE_AUDITOR_URL, never CLICKHOUSE_URL."""
    dsn = settings.CLICKHOUSE_AUDITOR_URL
    if not dsn:
        raise AuditorAccessNotConfigured(
            "the audit store is a ClickHouse server (CLICKHOUSE_URL is set) and SHARDWALLET_CLICKHOUSE_AUDITOR_URL is "
            "not: auditors' tools read with a read-only ClickHouse user of their own (e.g. "
            'http://auditor:secret@host:8123/audit; docs/ARCHITECTURE.md, "Auditor access") and never with the '
            "writer's credentials"
        )
    if _dsn_user(dsn) == _dsn_user(settings.CLICKHOUSE_URL):
        raise AuditorAccessNotConfigured(
            f"SHARDWALLET_CLICKHOUSE_AUDITOR_URL logs in as {_dsn_user(dsn)!r}, the user CLICKHOUSE_URL writes with: "
            "give auditors a read-only ClickHouse user of their own"
        )
    return dsn


def reader_client(port: int | None = None) -> Any:
    """Auditors' client: the CDC process's endpoint as an auditor account, or the server as the auditor user."""
    if embedded():
        login = settings.AUDIT_LOGIN
        return clickhouse_connect.get_client(
            host="127.0.0.1",
            port=port or settings.AUDIT_HTTP_PORT,
            interface="http",
            connect_timeout=3,
            username=login.user if login else None,
            password=login.password if login else "",
        )
    return clickhouse_connect.get_client(dsn=auditor_dsn())


def _refused_login(exc: Exception) -> bool:
    return "AUTHENTICATION_FAILED" in str(exc) or "Code: 516." in str(exc)


def connect_reader(port: int | None = None) -> Any:
    """`reader_client`, turning a refused connection or login into advice; a connection that is
    not read-only is refused, not assumed away (a DSN naming the writer, a profile lost)."""
    try:
        client = reader_client(port)
    except AuditStoreUnavailable:
        raise
    except Exception as exc:
        if embedded():
            where = f"127.0.0.1:{port or settings.AUDIT_HTTP_PORT}"
            if _refused_login(exc):
                who = f"as {settings.AUDIT_LOGIN.user!r}" if settings.AUDIT_LOGIN else "without an auditor account"
                raise AuditStoreUnavailable(
                    f"the audit endpoint at {where} refused to log in {who}: set SHARDWALLET_AUDIT_LOGIN=name:secret, "
                    "an account of the CDC process's SHARDWALLET_AUDIT_AUDITORS (or its file)"
                ) from exc
            raise AuditStoreUnavailable(
                f"the embedded audit store is served by the CDC process at {where}, which does not answer "
                f"({type(exc).__name__}); start it with `manage.py run_cdc` (`make run` does)"
            ) from exc
        raise AuditStoreUnavailable(
            f"ClickHouse at {server_address(settings.CLICKHOUSE_AUDITOR_URL)} refused the auditor user: {exc}"
            if _refused_login(exc)
            else f"ClickHouse at {server_address(settings.CLICKHOUSE_AUDITOR_URL)} does not answer: {exc}"
        ) from exc
    require_read_only(client)
    return client


def require_read_only(client: Any) -> None:
    """Refuse an auditors' connection on which a query could write: ClickHouse's `readonly` is 0."""
    level = int(client.query("SELECT getSetting('readonly')").result_rows[0][0])
    if level < 1:
        raise AuditStoreUnavailable(
            "the auditors' connection is not read-only (readonly=0): give SHARDWALLET_CLICKHOUSE_AUDITOR_URL a user"
            " whose settings profile has readonly = 1 (docker/clickhouse/initdb), never the writer's"
        )
