from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.workers import flush_redis


@pytest.fixture(autouse=True)
def _empty_queue(devstack: object) -> Iterator[None]:
    """Tests here leave saga messages in Redis on purpose (no worker runs); drop them after."""
    yield
    flush_redis()
