"""serve's supervisor on plain processes: restarts with backoff, gives up on a program that never stays up."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from apps.common import supervision
from apps.common.supervision import Program, Supervisor, SupervisorGaveUp, backoff_seconds


def poll_for(supervisor: Supervisor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        supervisor.poll()
        time.sleep(0.02)


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_seconds(n) for n in (1, 2, 3, 4, 5, 6, 9)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_program_that_never_stays_up_is_given_up_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervision, "BACKOFF_FIRST_SECONDS", 0.01)
    lines: list[str] = []
    state = tmp_path / "supervisor.json"
    crashing = Program("crashing", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ))
    steady = Program("steady", [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))
    supervisor = Supervisor([crashing, steady], state, lines.append)
    supervisor.start_all()
    try:
        with pytest.raises(SupervisorGaveUp, match="crashing exited 5 times in a row"):
            poll_for(supervisor, 30)
        recorded = json.loads(state.read_text())["programs"]
        assert recorded["crashing"]["restarts"] == 4
        assert recorded["crashing"]["last_exit_code"] == 3
        assert recorded["steady"]["restarts"] == 0
        assert recorded["steady"]["up"] is True
        assert "crashing exited with code 3; restarting in 0s" in lines[0]
    finally:
        supervisor.stop_all()
    assert steady.process is not None
    assert steady.process.poll() is not None  # stopped with the rest
    assert not state.exists()
