"""A real browser (headless Chromium, driven by Playwright) against the admin served by
`manage.py serve`, the process `make run` starts: log in, find a wallet by id, freeze it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from apps.ledger.models import Wallet
from apps.operators.models import OperatorAction
from tests.factories import ALL_DATABASES, free_port, make_client, make_wallet
from tests.operators.helpers import PASSWORD, make_staff, metric_samples, parked_transfer, total
from tests.polling import wait_until_serving
from tests.workers import flush_redis

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def scene() -> dict[str, Any]:
    """Wallets on both shards and a parked transfer, made before the server (and its worker) starts."""
    owner, _ = make_client("acme")
    target = make_wallet(owner, funded=2500, shard="shard_01")
    others = [make_wallet(owner, funded=100 * i, shard=s) for i, s in enumerate(["shard_00", "shard_01", "shard_00"])]
    parked = parked_transfer(owner, others[2], others[1].id, 150)
    flush_redis()  # its saga message: it stays parked for the operator
    return {
        "target": target,
        "wallets": [target, *others],
        "parked": parked,
        "operator": make_staff("olga", "operators"),
    }


@pytest.fixture
def served(scene: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    """`manage.py serve` on a free port (reusing the test stack); stopped with Ctrl-C after the test."""
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test"}
    # Its output goes to a file: a pipe nobody reads during the test fills up (the CDC it
    # starts logs every change it streams) and then blocks the server mid-request.
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(port), "--keep-stack", "--workers", "1"],
            env=env, stdout=sink, stderr=subprocess.STDOUT, text=True, cwd=settings.BASE_DIR,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, proc, log.read_text)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    output = log.read_text()
    assert proc.returncode == 0, output
    assert f"admin:      {base}/admin/" in output


def freeze_in_browser(base: str, chromium: Path, username: str, wallet_id: str) -> dict[str, str]:
    """What an operator does, click by click; returns what the pages showed."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, str] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(f"{base}/admin/")
            page.fill("input[name=username]", username)
            page.fill("input[name=password]", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_selector("#site-name")

            page.goto(f"{base}/admin/ledger/wallet/")
            seen["rows_before_search"] = str(page.locator("#result_list tbody tr").count())
            page.fill("#searchbar", wallet_id)
            page.press("#searchbar", "Enter")
            page.wait_for_url("**/admin/ledger/wallet/?q=*")
            rows = page.locator("#result_list tbody tr")
            seen["rows_after_search"] = str(rows.count())
            seen["status_before"] = rows.first.locator("td.field-status").inner_text()
            seen["shard"] = rows.first.locator("td.field-shard").inner_text()

            rows.first.locator("th.field-id a").click()
            page.click("a.operator-action:has-text('Freeze wallet')")
            page.fill("textarea[name=reason]", "Suspicious activity reported by the bank (ticket 4711)")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "admin-freeze-form.png"), full_page=True)
            page.click("input[type=submit][value='Freeze wallet']")
            page.wait_for_selector("ul.messagelist")
            seen["message"] = page.locator("ul.messagelist").inner_text()
            page.screenshot(path=str(ARTIFACTS / "admin-wallet-detail.png"), full_page=True)

            page.goto(f"{base}/admin/ledger/wallet/?q={wallet_id}")
            seen["status_after"] = page.locator("#result_list tbody tr td.field-status").first.inner_text()
            page.screenshot(path=str(ARTIFACTS / "admin-wallet-frozen.png"), full_page=True)
            page.goto(f"{base}/admin/ledger/wallet/")
            page.screenshot(path=str(ARTIFACTS / "admin-wallet-changelist.png"), full_page=True)

            # `serve` runs the CDC process as `make run` does: the page shows its lag once it reports.
            deadline = time.monotonic() + 60
            page.goto(f"{base}/admin/operations/")
            while not page.locator("#cdc-lag").count() and time.monotonic() < deadline:
                page.wait_for_timeout(500)
                page.reload()
            seen["stalled"] = page.locator("#stalled-transfers").inner_text()
            seen["cdc"] = page.locator("#cdc-lag").inner_text() if page.locator("#cdc-lag").count() else ""
            page.screenshot(path=str(ARTIFACTS / "admin-operations.png"), full_page=True)
        finally:
            browser.close()
    return seen


def test_an_operator_finds_a_wallet_by_id_and_freezes_it_in_a_real_browser(scene, served, chromium) -> None:
    target, operator = scene["target"], scene["operator"]

    # Playwright's sync API runs an event loop in its thread, where Django refuses ORM calls: browse elsewhere.
    with ThreadPoolExecutor(max_workers=1) as pool:
        seen = pool.submit(freeze_in_browser, served, chromium, "olga", str(target.id)).result(timeout=180)

    assert seen["rows_before_search"] == str(len(scene["wallets"]))  # wallets from both shards
    assert seen["rows_after_search"] == "1"
    assert (seen["shard"], seen["status_before"], seen["status_after"]) == ("shard_01", "Active", "Frozen")
    assert "now frozen (was active)" in seen["message"]
    assert Wallet.objects.using("shard_01").get(id=target.id).status == "frozen"
    [record] = OperatorAction.objects.using("default").all()
    assert (record.actor_id, record.action, record.target_id) == (operator.id, "freeze_wallet", target.id)
    assert record.reason == "Suspicious activity reported by the bank (ticket 4711)"
    assert (ARTIFACTS / "admin-wallet-changelist.png").stat().st_size > 10_000
    assert str(scene["parked"].id) in seen["stalled"]
    assert "parked" in seen["stalled"]
    assert all(alias in seen["cdc"] for alias in ("shard_00", "shard_01")), seen["cdc"]

    # The server's gunicorn workers counted those page views in the multiprocess metrics directory.
    with urllib.request.urlopen(f"{served}/metrics", timeout=10) as response:  # noqa: S310
        samples = metric_samples(response.read().decode())
    assert total(samples, "shardwallet_http_request_seconds_count", route="admin/operations/", status="200") >= 1
    assert total(samples, "shardwallet_transfers_parked", shard="shard_00") == 1
