"""`manage.py cdc_ready`: an orchestrator's check of the CDC process on its host, run as it would run it."""

import subprocess
import sys

import pytest
from django.conf import settings

from tests.audit.cdc import CdcProcess
from tests.factories import ALL_DATABASES
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def cdc_ready(cdc: CdcProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), "cdc_ready", *args],
        env=cdc.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_cdc_ready_before_during_and_after_the_process(devstack, cdc: CdcProcess) -> None:
    before = cdc_ready(cdc)
    assert before.returncode == 1
    assert "run_cdc has not started here" in before.stderr

    cdc.start()
    result = wait_until(lambda: (r := cdc_ready(cdc)).returncode == 0 and r, 60, "cdc_ready to pass", every=1)
    assert "ready: streaming shard_00, shard_01" in result.stdout
    assert cdc_ready(cdc, "--live").returncode == 0

    cdc.kill()  # its status file stays behind, no longer updated
    stale = wait_until(lambda: (r := cdc_ready(cdc, "--live")).returncode == 1 and r, 30, "--live to fail", every=1)
    assert "is not running" in stale.stderr
