from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workers import flush_redis


@pytest.fixture(autouse=True)
def _empty_queue(devstack: object) -> Iterator[None]:
    """Tests here leave saga messages in Redis on purpose (no worker runs); drop them after."""
    yield
    flush_redis()


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium for the browser tests, installed with apt-get when missing (we never
    let Playwright download a browser of its own)."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.fail("the browser tests need Debian's chromium: apt-get install -y chromium")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    return CHROMIUM
