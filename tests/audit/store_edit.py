"""Change the audit store behind the CDC's back: the embedded store opens in one process at a
time, so the CDC process is stopped, a short-lived process writes, and the CDC starts again."""

from __future__ import annotations

import json
import subprocess
import sys

from django.conf import settings

from tests.audit.cdc import CdcProcess

_WRITE = """
import json, sys
import django
django.setup()
from apps.audit.store import writer_client
client = writer_client()
for statement in json.loads(sys.argv[1]):
    client.command(statement)
"""


def write_store(cdc: CdcProcess, *statements: str, env: dict[str, str] | None = None, wait: bool = True) -> None:
    cdc.stop()
    done = subprocess.run(
        [sys.executable, "-c", _WRITE, json.dumps(statements)],
        env=cdc.env(),
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    cdc.start(env=env, wait=wait)
