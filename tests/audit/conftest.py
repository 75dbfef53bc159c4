from __future__ import annotations

from collections.abc import Iterator

import clickhouse_connect
import pytest

from apps.audit.schema import migrate
from apps.audit.sink import AuditSink
from tests.audit.cdc import CdcProcess


@pytest.fixture
def cdc() -> Iterator[CdcProcess]:
    """A CDC process with its own store, slots and port (not started: tests choose when)."""
    process = CdcProcess()
    yield process
    process.cleanup()


@pytest.fixture(scope="session")
def store_sink(tmp_path_factory: pytest.TempPathFactory) -> AuditSink:
    """A real chDB store in this process (chDB opens one data path per process: one per session)."""
    client = clickhouse_connect.get_client(interface="chdb", path=str(tmp_path_factory.mktemp("audit-chdb")))
    migrate(client)
    return AuditSink(client)
