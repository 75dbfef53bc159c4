from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.audit.cdc import CdcProcess


@pytest.fixture
def cdc() -> Iterator[CdcProcess]:
    """A CDC process with its own store, slots and port (not started: tests choose when)."""
    process = CdcProcess()
    yield process
    process.cleanup()
