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


def test_serve_answers_http_with_the_printed_demo_key_and_stops_on_sigint() -> None:
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test"}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--keep-stack", "--workers", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, body = http("GET", f"{base}/health")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
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
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert key in output, "serve prints the demo key"
    assert "admin" in output
    schedule = str(Path(settings.DEVSTACK_DIR) / "celerybeat-schedule")
    left_over = subprocess.run(["pgrep", "-f", schedule], capture_output=True, text=True).stdout
    assert left_over == "", "serve stops the beat (and worker) it started"
