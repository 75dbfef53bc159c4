"""`manage.py serve` (what `make run` calls) brings the service up and stops it on Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from apps.sharding.routing import alias_for_id
from tests.contract.schema import check_response
from tests.factories import ALL_DATABASES, free_port
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def http(
    method: str, url: str, key: str | None = None, body: dict | None = None, idempotency_key: str | None = None
) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None)  # noqa: S310
    request.add_header("Content-Type", "application/json")
    if idempotency_key:
        request.add_header("Idempotency-Key", idempotency_key)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        # Longer than any ?wait= the test asks for: the server holds such a request open until then.
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            status, headers, content = response.status, response.headers.items(), response.read()
    except urllib.error.HTTPError as exc:
        status, headers, content = exc.code, exc.headers.items(), exc.read()
    sent = urllib.parse.urlsplit(url)
    check_response(method, sent.path, sent.query, status, headers, content)
    return status, json.loads(content)


def wallet_on(base: str, key: str, alias: str) -> str:
    """Create wallets until one lands on `alias` (buckets are random)."""
    for _ in range(100):
        _, wallet = http("POST", f"{base}/v1/wallets", key, {"currency": "USD"})
        if alias_for_id(uuid.UUID(wallet["id"])) == alias:
            return wallet["id"]
    raise AssertionError(f"no wallet landed on {alias}")


def test_serve_answers_http_with_the_printed_demo_key_restarts_what_dies_and_stops_on_sigint(tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test"}
    log = tmp_path / "serve.log"  # a file, not a pipe: nobody reads a pipe while the test runs, and a full one blocks
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(port), "--keep-stack", "--workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, body = http("GET", f"{base}/health")
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.3)
        assert status == 200
        assert body["status"] == "ok"
        key = (Path(settings.DEVSTACK_DIR) / "demo_api_key").read_text().strip()
        status, wallet = http("POST", f"{base}/v1/wallets", key, {"currency": "USD"})
        assert status == 201
        status, _ = http("GET", f"{base}/v1/wallets/{wallet['id']}/balance", key)
        assert status == 200
        # A cross-shard transfer is carried out by the worker that serve started.
        payer = wallet_on(base, key, "shard_00")
        payee = wallet_on(base, key, "shard_01")
        http("POST", f"{base}/v1/wallets/{payer}/deposits", key, {"amount_minor": 900}, idempotency_key="d1")
        body = {"from": payer, "to": payee, "amount_minor": 300, "currency": "USD"}
        status, transfer = http("POST", f"{base}/v1/transfers?wait=20", key, body, idempotency_key="t1")
        assert (status, transfer["status"]) == (201, "completed")

        # A role that dies is started again, and /metrics counts it; the others go on.
        state_file = Path(settings.DEVSTACK_DIR) / "supervisor.json"
        first = json.loads(state_file.read_text())["programs"]
        api_pid = first["api"]["pid"]
        os.killpg(first["saga worker"]["pid"], signal.SIGKILL)
        restarted = wait_until(
            lambda: (p := json.loads(state_file.read_text())["programs"]["saga worker"])["restarts"] == 1 and p,
            30, "serve to restart the killed worker",
        )  # fmt: skip
        assert restarted["up"]
        assert restarted["pid"] != first["saga worker"]["pid"]
        assert restarted["last_exit_code"] == -signal.SIGKILL
        with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:  # noqa: S310
            metrics = response.read().decode()
        assert 'shardwallet_supervised_restarts_total{process="saga worker"} 1.0' in metrics
        assert 'shardwallet_supervised_restarts_total{process="api"} 0.0' in metrics
        assert json.loads(state_file.read_text())["programs"]["api"]["pid"] == api_pid
        # The new worker carries out the next cross-shard transfer.
        status, transfer = http("POST", f"{base}/v1/transfers?wait=20", key, body, idempotency_key="t2")
        assert (status, transfer["status"]) == (201, "completed")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    output = log.read_text()
    assert proc.returncode == 0, output
    assert key in output, "serve prints the demo key"
    assert "admin" in output
    schedule = str(Path(settings.DEVSTACK_DIR) / "celerybeat-schedule")
    left_over = subprocess.run(["pgrep", "-f", schedule], capture_output=True, text=True).stdout
    assert left_over == "", "serve stops the beat (and worker) it started"
    assert "saga worker exited with code -9; restarting in 1s" in output
    for pid in (restarted["pid"], api_pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
