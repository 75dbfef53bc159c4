"""The fuzzer: schemathesis generates requests from the OpenAPI schema and sends them to a live
server (`manage.py serve`: gunicorn, a Celery worker and beat, on the test stack), every
operation on its own and in stateful sequences that follow the schema's links (create a wallet,
read it, fund it, pay from it, read the transfer). Every response must be documented and match
the schema (response objects held strictly, as in schema.py), none may be a server error, and
requests the schema refuses must be refused.

Two runs of `st run`: every operation in every phase, then a stateful-only run on the
sequence's operations, where the sequence is walked whole (among every link it is rare).
Bounded by tests/contract/schemathesis.toml (examples per operation, steps per sequence); the
reports land in test-artifacts/contract/. Each run draws new data: a failure prints its seed
and a curl line; `st run ... --seed N` replays it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from apps.sharding.routing import shard_aliases
from tests.contract.schema import generated_schema, strict
from tests.factories import ALL_DATABASES, free_port, make_client, make_wallet
from tests.polling import wait_until_serving
from tests.workers import flush_redis

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

CONFIG = Path(__file__).with_name("schemathesis.toml")
REPORTS = Path(settings.BASE_DIR) / "test-artifacts" / "contract"
# The sequence a client follows through the links: create a wallet, read it, fund it, pay from
# it, read the transfer. A second, stateful-only run on just these operations walks it whole.
SEQUENCE_OPERATIONS = [
    "wallets_create",
    "wallets_retrieve",
    "wallets_deposits_create",
    "transfers_create",
    "transfers_retrieve",
]


@pytest.fixture
def served(devstack: Any) -> Iterator[str]:
    """`manage.py serve` on a free port, reusing the test stack; stopped with Ctrl-C afterwards."""
    flush_redis()  # no saga message left by earlier tests for this server's worker
    port = free_port()
    log = Path(settings.DEVSTACK_DIR) / f"serve-contract-{port}.log"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(port), "--keep-stack", "--workers", "2", "--no-cdc"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=settings.BASE_DIR,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc, log.read_text)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    log.unlink()


def fuzz(base: str, key: str, schema_file: Path, env: dict[str, str], name: str, *args: str) -> dict[str, Any]:
    """`st run` against `base`; returns its JSON summary, with its events as `events`."""
    reports = REPORTS / name
    shutil.rmtree(reports, ignore_errors=True)
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", str(schema_file),
         "--url", base, "--header", f"Authorization: Bearer {key}", "--report", "json,ndjson",
         "--report-dir", str(reports), "--no-color", *args],
        cwd=settings.BASE_DIR, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    print(run.stdout, run.stderr, f"{name}: {time.monotonic() - started:.0f} s", sep="\n")
    assert run.returncode == 0, f"{run.stdout[-12000:]}\n{run.stderr[-3000:]}\n(reports in {reports})"
    [summary_file] = reports.glob("json-*.json")
    summary = json.loads(summary_file.read_text())
    assert (summary["failures"], summary["errors"]) == ([], []), f"reports in {reports}"
    [events_file] = reports.glob("ndjson-*.ndjson")
    summary["events"] = [json.loads(line) for line in events_file.read_text().splitlines()]
    return summary


def check_statuses(summary: dict[str, Any], check: str) -> dict[str, int]:
    """How often the run's events report `check` with each status (success, failure, skip)."""
    counts: dict[str, int] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") == check and "status" in node:
                counts[node["status"]] = counts.get(node["status"], 0) + 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(summary["events"])
    return counts


@dataclass(frozen=True)
class Step:
    """One call of a stateful scenario."""

    operation_id: str
    status: int
    linked: bool  # its parameters came from an earlier response through a link
    path: dict[str, Any]
    body: Any
    answer: Any


def scenarios(summary: dict[str, Any], schema: dict[str, Any]) -> list[list[Step]]:
    """The calls of each stateful scenario of a run."""
    operation_ids = {
        f"{method.upper()} {path}": operation["operationId"]
        for path, path_item in schema["paths"].items()
        for method, operation in path_item.items()
    }
    found = []
    for event in summary["events"]:
        finished = event.get("ScenarioFinished", {})
        recorder = finished.get("recorder", {})
        if finished.get("phase") != "stateful" or "cases" not in recorder:
            continue
        steps = []
        for case_id, case in recorder["cases"].items():
            response = recorder["interactions"].get(case_id, {}).get("response")
            if not response:
                continue
            value = case["value"]
            content = base64.b64decode(response.get("content", {}).get("$base64", ""))
            steps.append(
                Step(
                    operation_ids[f"{value['method']} {value['path']}"],
                    response["status_code"],
                    bool(case.get("transition")) and case.get("is_transition_applied", False),
                    value.get("path_parameters") or {},
                    value.get("body"),
                    json.loads(content) if content else None,
                )
            )
        found.append(steps)
    return found


def sequences_walked(steps: list[Step]) -> int:
    """Wallets of this scenario that went through the whole sequence, each step after the
    creation reached through a link and answered with success."""

    def linked(operation_id: str, statuses: set[int]) -> list[Step]:
        return [s for s in steps if s.operation_id == operation_id and s.linked and s.status in statuses]

    walked = 0
    for created in [s for s in steps if s.operation_id == "wallets_create" and s.status == 201]:
        wallet = created.answer["id"]
        read = any(s.path.get("wallet_id") == wallet for s in linked("wallets_retrieve", {200}))
        funded = any(s.path.get("wallet_id") == wallet for s in linked("wallets_deposits_create", {201}))
        paid = {
            s.answer["id"]
            for s in linked("transfers_create", {201, 202})
            if isinstance(s.body, dict) and s.body.get("from") == wallet
        }
        transfer_read = any(s.path.get("transfer_id") in paid for s in linked("transfers_retrieve", {200}))
        walked += read and funded and transfer_read
    return walked


def test_fuzzing_from_the_schema_finds_no_server_error_and_no_off_schema_response(served: str) -> None:
    owner, key = make_client("fuzzer")
    # USD wallets on every shard, for the fuzzer's hooks (hooks.py) to pay from and to.
    payers = [make_wallet(owner, funded=10**12, shard=alias) for alias in shard_aliases()]
    payees = [make_wallet(owner, shard=alias) for alias in shard_aliases()]
    with urllib.request.urlopen(f"{served}/v1/schema/?format=json", timeout=10) as response:  # noqa: S310
        schema = json.loads(response.read())
    assert schema == generated_schema(), "the server serves the schema the test suite checks against"

    schema_file = REPORTS / "openapi.strict.json"
    REPORTS.mkdir(parents=True, exist_ok=True)
    schema_file.write_text(json.dumps(strict(schema), indent=1))
    env = {
        "CONTRACT_PAYER_IDS": ",".join(str(w.id) for w in payers),
        "CONTRACT_PAYEE_IDS": ",".join(str(w.id) for w in payees),
    }

    # Every operation, in every phase: examples, coverage, fuzzing, stateful over every link.
    summary = fuzz(served, key, schema_file, env, "all")
    operations = sum(len(path_item) for path_item in schema["paths"].values())
    assert summary["operations"]["tested"] == summary["operations"]["total"] == operations
    # Schemathesis's authorization check ran: each operation sent without the key, or with a
    # wrong one, was refused (401), never served.
    ignored_auth = check_statuses(summary, "ignored_auth")
    assert ignored_auth.get("success", 0) > 0, ignored_auth
    assert set(ignored_auth) <= {"success", "skip", "skipped"}, ignored_auth

    # The client's sequence, walked whole through the links in one scenario at least.
    only = [arg for operation_id in SEQUENCE_OPERATIONS for arg in ("--include-operation-id", operation_id)]
    summary = fuzz(served, key, schema_file, env, "sequence", "--phases", "stateful", "--max-examples", "30", *only)
    walked = sum(sequences_walked(steps) for steps in scenarios(summary, schema))
    print(f"the sequence was walked whole {walked} times")
    assert walked, "no scenario created a wallet, read it, funded it, paid from it and read the transfer"
