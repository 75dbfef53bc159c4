"""The operators' surfaces (admin, operations page, /metrics) answer on their own listener only."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from tests.factories import ALL_DATABASES, free_port, make_client
from tests.polling import wait_until_serving

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)

OPS_PATHS = ("/admin/", "/admin/login/", "/admin/operations/", "/admin/ledger/wallet/", "/metrics")


@pytest.fixture
def ops_bind(settings: Any) -> None:
    settings.OPS_BIND = "127.0.0.1:8001"


class _OnPort(Client):
    """The test client as if connected to one listener (RequestFactory sets SERVER_PORT per request)."""

    def __init__(self, port: str) -> None:
        super().__init__()
        self.port = port

    def generic(self, *args: Any, **extra: Any) -> Any:
        return super().generic(*args, **{**extra, "SERVER_PORT": self.port})


def on_port(port: str) -> Client:
    return _OnPort(port)


def test_the_public_listener_answers_404_for_operators_paths(ops_bind: None) -> None:
    public, ops = on_port("8000"), on_port("8001")
    for path in OPS_PATHS:
        response = public.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
        # A Host header naming the operators' port changes nothing: the socket decides.
        assert public.get(path, HTTP_HOST="127.0.0.1:8001").status_code == 404
    assert ops.get("/admin/").status_code == 302  # to the login page
    assert ops.get("/admin/login/").status_code == 200
    assert ops.get("/metrics").status_code == 200


def test_the_operators_listener_serves_no_api(ops_bind: None) -> None:
    _, key = make_client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    assert on_port("8000").get("/v1/wallets", **auth).status_code == 200
    assert on_port("8001").get("/v1/wallets", **auth).status_code == 404
    for port in ("8000", "8001"):
        assert on_port(port).get("/health/ready").status_code == 200


def test_without_an_operators_bind_one_listener_serves_both(settings: Any) -> None:
    settings.OPS_BIND = ""
    assert Client().get("/admin/").status_code == 302
    assert Client().get("/metrics").status_code == 200


def test_public_health_says_up_or_down_and_the_reasons_go_to_the_log(
    ops_bind: None, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.AUDIT_CDC_EXPECTED = True  # no CDC process runs here: its component is down, with a reason
    with caplog.at_level(logging.WARNING, logger="apps.common.health"):
        public = on_port("8000").get("/health").json()["components"]
    assert public["audit_cdc"] == {"ok": False}
    assert set(public["shard_00"]) == {"ok", "latency_ms"}
    detailed = on_port("8001").get("/health").json()["components"]["audit_cdc"]
    assert "run_cdc" in detailed["error"]
    assert any("audit_cdc is down" in r.getMessage() and "run_cdc" in r.getMessage() for r in caplog.records)


def _get(url: str, **headers: str) -> int:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - our own local server
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_run_api_listens_on_both_and_routes_by_the_socket(devstack: Any) -> None:
    """The real server: gunicorn on the API's and the operators' addresses, told apart by port."""
    api_port, ops_port = free_port(), free_port()
    log = Path(settings.DEVSTACK_DIR) / f"run-api-{api_port}.log"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test"}
    argv = [sys.executable, "manage.py", "run_api", "--bind", f"127.0.0.1:{api_port}",
            "--ops-bind", f"127.0.0.1:{ops_port}", "--workers", "1"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=settings.BASE_DIR)
    api, ops = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ops_port}"
    try:
        wait_until_serving(api, proc, log.read_text)
        urllib.request.install_opener(urllib.request.build_opener(_NoRedirect))
        for path in OPS_PATHS:
            assert _get(api + path) == 404, path
            assert _get(api + path, Host=f"127.0.0.1:{ops_port}") == 404, path
        assert _get(ops + "/admin/") == 302
        assert _get(ops + "/metrics") == 200
        assert _get(api + "/v1/wallets") == 401  # the API is there (and wants a key)
        assert _get(ops + "/v1/wallets") == 404
    finally:
        urllib.request.install_opener(urllib.request.build_opener())
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    log.unlink()
