"""After the faults: let the service finish on its own, then ask its own tools whether it agrees.

The supervisor keeps running; nothing here drives a transfer. The sweeper and the retries
must bring every accepted transfer to a terminal state within the bound, and the CDC must
catch up, or the run fails.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

from django.db import DatabaseError, connections

from apps.audit.status import read_status
from bench.stack import ROOT
from chaos.snapshot import TransferRow, in_flight
from chaos.timeline import Timeline


def wait_until_terminal(timeline: Timeline, timeout: float) -> list[TransferRow]:
    """Poll until no transfer is in flight; returns those still in flight (or parked) at the bound."""
    deadline = time.monotonic() + timeout
    left: list[TransferRow] = []
    last_said = 0.0
    while time.monotonic() < deadline:
        try:
            left = in_flight()
        except DatabaseError:
            connections.close_all()  # a shard was restarted under this connection: reconnect
            time.sleep(1)
            continue
        if not left:
            return []
        if time.monotonic() - last_said > 5:
            parked = sum(1 for t in left if t.parked)
            timeline.say(f"waiting: {len(left)} transfer(s) in flight ({parked} parked)")
            last_said = time.monotonic()
        time.sleep(1)
    return left


def wait_for_cdc(timeout: float) -> float | None:
    """Seconds until the CDC process had confirmed every shard's WAL, or None if it did not in time."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status = read_status()
        shards = (status or {}).get("shards", {})
        if shards and all(s["connected"] and s["lag_bytes"] == 0 for s in shards.values()):
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


@dataclass(frozen=True)
class CommandResult:
    command: str
    ok: bool
    output: str


def run_manage(*args: str, timeout: float = 300) -> CommandResult:
    """One of the service's own management commands, as an operator would run it."""
    command = f"manage.py {' '.join(args)}"
    try:
        result = subprocess.run(  # noqa: S603 - our own command line
            [sys.executable, str(ROOT / "manage.py"), *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return CommandResult(command, False, f"timed out after {timeout:g}s")
    return CommandResult(command, result.returncode == 0, (result.stdout + result.stderr).strip())


SAGA_METRICS = (
    "shardwallet_saga_retries_total",
    "shardwallet_saga_parked_total",
    "shardwallet_sweeper_redriven_total",
)


def saga_metrics(api_url: str) -> dict[str, float]:
    """The saga's own counters over the run (summed over every process, dead ones included)."""
    try:
        with urllib.request.urlopen(f"{api_url}/metrics", timeout=10) as response:  # noqa: S310 - our own URL
            text = response.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in SAGA_METRICS:
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals
