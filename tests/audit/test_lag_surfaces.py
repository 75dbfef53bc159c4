"""A running CDC process's lag reaches /metrics, /health and the operations page, with no wiring to set up."""

import pytest
from django.test import Client

from tests.audit.cdc import CdcProcess, wait_until
from tests.factories import ALL_DATABASES
from tests.operators.helpers import logged_in, make_staff

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]


def test_a_running_cdc_process_shows_its_lag_everywhere_and_its_absence_too(cdc: CdcProcess, settings) -> None:
    settings.AUDIT_DIR = cdc.dir  # where this CDC process publishes its status, as `make run`'s does
    settings.AUDIT_CDC_EXPECTED = False  # shown because it runs, not because it is expected
    cdc.start()
    metrics = Client().get("/metrics").content.decode()
    assert "shardwallet_cdc_up 1.0" in metrics
    for alias in settings.SHARD_MAP.aliases:
        assert f'shardwallet_cdc_lag_seconds{{shard="{alias}"}}' in metrics
        assert f'shardwallet_cdc_lag_bytes{{shard="{alias}"}}' in metrics
    component = Client().get("/health").json()["components"]["audit_cdc"]
    assert set(component["shards"]) == set(settings.SHARD_MAP.aliases)
    assert all(shard["connected"] for shard in component["shards"].values())
    html = logged_in(make_staff("vera", "viewers")).get("/admin/operations/").content.decode()
    assert 'id="cdc-lag"' in html
    assert "CDC not running" not in html
    for alias in settings.SHARD_MAP.aliases:
        assert f"<td>{alias}</td><td>yes</td>" in html

    cdc.kill()  # its status goes stale: the surfaces say the stream is not fed, rather than a frozen lag
    wait_until(lambda: "shardwallet_cdc_up 0.0" in Client().get("/metrics").content.decode(), timeout=30,
               what="the metrics to see the CDC gone")  # fmt: skip
    assert "CDC not running" in logged_in(make_staff("otto", "viewers")).get("/admin/operations/").content.decode()
    assert Client().get("/health").json()["components"]["audit_cdc"]["ok"] is False


def test_a_cdc_process_that_stops_cleanly_leaves_no_lag_and_no_alarm(cdc: CdcProcess, settings) -> None:
    settings.AUDIT_DIR = cdc.dir
    settings.AUDIT_CDC_EXPECTED = False
    cdc.start()
    assert "shardwallet_cdc_up 1.0" in Client().get("/metrics").content.decode()
    cdc.stop()  # SIGTERM: its last status says it stopped
    assert "shardwallet_cdc_up 0.0" in Client().get("/metrics").content.decode()
    assert "audit_cdc" not in Client().get("/health").json()["components"]
