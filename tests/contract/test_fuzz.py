"""The fuzzer: schemathesis generates requests from the OpenAPI schema and sends them to a live
server (`manage.py serve`: gunicorn, a Celery worker and beat, on the test stack), every
operation on its own and in stateful sequences that follow the schema's links (create a wallet,
read it, fund it, pay from it, read the transfer). Every response must be documented and match
the schema (response objects held strictly, as in schema.py), none may be a server error, and
requests the schema refuses must be refused.

Bounded by tests/contract/schemathesis.toml (examples per operation, steps per sequence). Each
run draws new data: a failure prints its seed and a curl line; `st run ... --seed N` replays it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from apps.sharding.routing import shard_aliases
from tests.contract.schema import generated_schema, strict
from tests.factories import ALL_DATABASES, free_port, make_client, make_wallet
from tests.workers import flush_redis

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

CONFIG = Path(__file__).with_name("schemathesis.toml")
REPORTS = Path(settings.BASE_DIR) / "test-artifacts" / "contract"
CREATE_OPERATIONS = {
    "POST /v1/wallets",
    "POST /v1/wallets/{wallet_id}/deposits",
    "POST /v1/wallets/{wallet_id}/withdrawals",
    "POST /v1/transfers",
    "POST /v1/transfers/batch",
}
# The sequence the fuzzer must walk through links: each step reached from a create operation.
SEQUENCE = [
    "GET /v1/wallets/{wallet_id}",
    "POST /v1/wallets/{wallet_id}/deposits",
    "POST /v1/transfers",
    "GET /v1/transfers/{transfer_id}",
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
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):  # noqa: S310
                    break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "serve did not answer in 60 s"
                time.sleep(0.3)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    log.unlink()


def fuzz(base: str, key: str, schema: dict[str, Any], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, Path]:
    REPORTS.mkdir(parents=True, exist_ok=True)
    schema_file = REPORTS / "openapi.strict.json"
    schema_file.write_text(json.dumps(schema, indent=1))
    for old in REPORTS.glob("*-*.*json"):
        old.unlink()
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", str(schema_file),
         "--url", base, "--header", f"Authorization: Bearer {key}", "--report", "json,ndjson",
         "--report-dir", str(REPORTS), "--no-color"],
        cwd=settings.BASE_DIR, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return run, REPORTS


def links_followed(report_dir: Path) -> set[tuple[str, str]]:
    """(source, target) operation of every link the stateful phase followed."""
    followed = set()
    [events] = report_dir.glob("ndjson-*.ndjson")
    for line in events.read_text().splitlines():
        event = json.loads(line)
        for case in event.get("ScenarioFinished", {}).get("recorder", {}).get("cases", {}).values():
            transition = case.get("transition")
            if transition and case.get("is_transition_applied"):
                source, _, target = transition["id"].split(" -> ")  # "POST /v1/wallets -> [201] GetWallet -> GET ..."
                followed.add((source, target))
    return followed


def test_fuzzing_from_the_schema_finds_no_server_error_and_no_off_schema_response(served: str) -> None:
    owner, key = make_client("fuzzer")
    # USD wallets on every shard, for the fuzzer's hooks (hooks.py) to pay from and to.
    payers = [make_wallet(owner, funded=10**12, shard=alias) for alias in shard_aliases()]
    payees = [make_wallet(owner, shard=alias) for alias in shard_aliases()]
    with urllib.request.urlopen(f"{served}/v1/schema/?format=json", timeout=10) as response:  # noqa: S310
        schema = json.loads(response.read())
    assert schema == generated_schema(), "the server serves the schema the test suite checks against"

    started = time.monotonic()
    run, reports = fuzz(
        served,
        key,
        strict(schema),
        {
            "CONTRACT_PAYER_IDS": ",".join(str(w.id) for w in payers),
            "CONTRACT_PAYEE_IDS": ",".join(str(w.id) for w in payees),
        },
    )
    print(run.stdout, run.stderr, f"fuzzing took {time.monotonic() - started:.0f} s", sep="\n")
    assert run.returncode == 0, f"{run.stdout[-12000:]}\n{run.stderr[-3000:]}\n(reports in {reports})"

    [summary_file] = reports.glob("json-*.json")
    summary = json.loads(summary_file.read_text())
    operations = sum(len(path_item) for path_item in schema["paths"].values())
    assert summary["operations"]["tested"] == summary["operations"]["total"] == operations
    assert (summary["failures"], summary["errors"]) == ([], [])
    followed = links_followed(reports)
    for target in SEQUENCE:
        sources = {source for source, reached in followed if reached == target}
        assert sources & CREATE_OPERATIONS, f"no link from a create operation was followed to {target}"
