"""/metrics (merged across processes, plus gauges read from the shards), JSON logs, /health."""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Callable

import pytest
from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.test import Client

from apps.observability.jsonlog import JsonFormatter
from apps.transfers.models import Transfer
from tests.factories import ALL_DATABASES, api_for, free_port, make_client
from tests.operators.helpers import cross_shard_pair, metric_samples, parked_transfer, total
from tests.workers import Worker, wait_terminal

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def scrape() -> dict:
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return metric_samples(response.content.decode())


def scrape_until(ready: Callable[[dict], bool], timeout: float = 10) -> dict:
    """Scrape until `ready(samples)` holds or `timeout` passes (the caller's asserts then say
    what is missing): worker processes count right after the commits a test waits on."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape()
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_request_metrics_take_their_labels_from_fixed_sets() -> None:
    client = Client()
    client.generic("BREW", "/health")
    client.generic("GET", "/health")
    samples = scrape()
    methods = {dict(labels).get("method") for (name, labels) in samples if name.startswith("shardwallet_http_request")}
    assert "BREW" not in methods
    assert {"other", "GET"} <= methods


def test_celery_takes_json_only_and_has_no_remote_control() -> None:
    from wallet_project.celery import app

    assert app.conf.accept_content == ["json"]
    assert app.conf.worker_enable_remote_control is False


def test_metrics_move_when_transfers_run_in_worker_processes(workers) -> None:
    workers.append(Worker())
    owner, key = make_client()
    payer, payee = cross_shard_pair(owner, funded=10_000)
    before = scrape()
    ids = []
    for i in range(3):
        body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": 100, "currency": "USD"}
        response = api_for(key).post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY=f"m-{i}")
        ids.append(uuid.UUID(response.json()["id"]))
    wait_terminal(ids, timeout=30)

    def moved_in(samples: dict, name: str, **labels: str) -> float:
        return total(samples, name, **labels) - total(before, name, **labels)

    after = scrape_until(
        lambda samples: (
            moved_in(samples, "shardwallet_drained_transfers_total", outcome="completed") >= 3
            and moved_in(samples, "shardwallet_saga_step_seconds_count", step="drain_credit", outcome="ok") >= 1
            and moved_in(samples, "shardwallet_transfer_transitions_total", status="completed") >= 3
        )
    )

    def moved(name: str, **labels: str) -> float:
        return moved_in(after, name, **labels)

    # Counted in the worker processes, summed through the multiprocess directory: the
    # shard drain credited and completed them in one or more batches.
    assert moved("shardwallet_drained_transfers_total", outcome="completed") == 3
    assert moved("shardwallet_saga_step_seconds_count", step="drain_credit", outcome="ok") >= 1
    assert moved("shardwallet_transfer_transitions_total", status="completed") == 3
    # Counted in this process (the API ran in-process): debited at creation.
    assert moved("shardwallet_transfer_transitions_total", status="debited") == 3
    assert moved("shardwallet_http_request_seconds_count", route="v1/transfers", status="202") == 3
    # Read from the shards at scrape time: nothing of these is in flight any more.
    assert total(after, "shardwallet_transfers_in_flight", shard="shard_00") == 0
    assert total(after, "shardwallet_shard_up", shard="shard_01") == 1
    # The CDC placeholder until the audit app reports lag.
    assert total(after, "shardwallet_cdc_up") == 0
    text = Client().get("/metrics").content.decode()
    assert "# TYPE shardwallet_cdc_lag_seconds gauge" in text
    assert "# TYPE shardwallet_saga_step_seconds histogram" in text


def test_failed_transfers_are_counted_by_reason_and_parked_ones_gauged() -> None:
    owner, key = make_client()
    payer, payee = cross_shard_pair(owner, funded=100)
    body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": 500, "currency": "USD"}
    before = scrape()
    api_for(key).post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY="too-much")
    parked_transfer(owner, payer, payee.id, 50)
    after = scrape()
    reason = {"status": "failed", "reason": "insufficient_funds"}
    assert (
        total(after, "shardwallet_transfer_transitions_total", **reason)
        - total(before, "shardwallet_transfer_transitions_total", **reason)
        == 1
    )
    # The shards' gauge counts what is in flight only: the parked one, not the failed one.
    assert total(after, "shardwallet_transfers_in_flight", shard="shard_00", status="debited") == 1
    assert total(after, "shardwallet_transfers_in_flight", shard="shard_00") == 1
    assert total(after, "shardwallet_transfers_parked", shard="shard_00") == 1
    assert total(after, "shardwallet_transfers_parked", shard="shard_01") == 0


def test_database_errors_are_counted_per_shard() -> None:
    before = total(scrape(), "shardwallet_db_errors_total", database="shard_01")
    with pytest.raises(DatabaseError), connections["shard_01"].cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table")
    after = scrape()
    assert total(after, "shardwallet_db_errors_total", database="shard_01") - before == 1
    assert total(after, "shardwallet_db_errors_total", database="shard_01", error="ProgrammingError") >= 1


@pytest.mark.slow
def test_retries_parking_and_a_down_shard_show_in_metrics_and_health(workers, payee_shard) -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    before = scrape()
    payee_shard.stop()
    try:
        from tests.factories import create_transfer

        transfer = create_transfer(owner, payer, payee.id, 100)
        workers.append(Worker(env={"SHARDWALLET_SAGA_MAX_RETRIES": "2"}))
        deadline = time.monotonic() + 30
        while Transfer.objects.using("shard_00").get(id=transfer.id).parked_at is None:
            assert time.monotonic() < deadline, "the transfer was never parked"
            time.sleep(0.2)
        during = scrape_until(  # counted right after the park commits
            lambda samples: (
                total(samples, "shardwallet_saga_parked_total") > total(before, "shardwallet_saga_parked_total")
            )
        )
        health = Client().get("/health")
    finally:
        payee_shard.start()
        connections["shard_01"].close()
    assert total(during, "shardwallet_saga_retries_total") - total(before, "shardwallet_saga_retries_total") == 2
    assert total(during, "shardwallet_saga_parked_total") - total(before, "shardwallet_saga_parked_total") == 1
    assert total(during, "shardwallet_db_errors_total", database="shard_01", error="OperationalError") >= 3
    assert total(during, "shardwallet_shard_up", shard="shard_01") == 0
    assert total(during, "shardwallet_transfers_parked", shard="shard_00") == 1
    assert health.status_code == 503
    assert health.json()["down"] == ["shard_01"]
    assert health.json()["components"]["shard_00"]["ok"] is True
    # The worker's log lines are JSON objects with the transfer's id as a field.
    logged = [json.loads(line) for line in workers[0].log_text().splitlines() if line.startswith("{")]
    retries = [line for line in logged if line["message"] == "transfer step failed, retrying"]
    assert retries
    assert {line["transfer_id"] for line in retries} == {str(transfer.id)}


def test_health_names_the_component_that_is_down(settings) -> None:
    assert Client().get("/health").json()["down"] == []
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    response = Client().get("/health")
    assert response.status_code == 503
    assert response.json()["down"] == ["redis"]


def test_logs_are_json_lines_carrying_transfer_and_wallet_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.jsonlog")
    logger.addHandler(handler)
    try:
        logger.warning("transfer step failed", extra={"transfer_id": "t-1", "wallet_id": "w-1", "attempt": 2})
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["message"] == "transfer step failed"
    assert (line["level"], line["logger"]) == ("WARNING", "tests.jsonlog")
    assert (line["transfer_id"], line["wallet_id"], line["attempt"]) == ("t-1", "w-1", 2)
    assert line["time"]
    assert settings.LOGGING["handlers"]["console"]["formatter"] == "json"


def test_each_response_says_how_long_the_application_worked_on_it_unless_turned_off(settings) -> None:
    """`Server-Timing: app;dur=<ms>`: what the bench reads to tell the API's own time from queueing."""
    _, key = make_client()
    response = api_for(key).get("/v1/wallets")
    assert response.status_code == 200
    name, _, duration = response["Server-Timing"].partition(";dur=")
    assert name == "app"
    assert 0 < float(duration) < 60_000
    settings.SERVER_TIMING_HEADER = False  # read when the middleware is built: a new client builds it
    assert "Server-Timing" not in api_for(key).get("/v1/wallets")


def test_the_in_flight_gauge_reads_an_index_not_every_transfer() -> None:
    """A scrape must cost what is in flight, not what the shard ever stored: its query can be
    answered from the partial index of in-flight transfers."""
    from apps.observability.collectors import _IN_FLIGHT_SQL

    with transaction.atomic(using="shard_00"), connections["shard_00"].cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + _IN_FLIGHT_SQL)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "transfer_in_flight" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_metrics_need_the_token_when_one_is_set(settings) -> None:
    settings.METRICS_TOKEN = "scrape-token-0123456789"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-0123456789")
    assert response.status_code == 200
    assert b"shardwallet_shard_up" in response.content


def test_a_scrape_flood_reads_the_shards_once_per_period(settings) -> None:
    """The gauges read from the shards are cached per process: scrapes cost O(1), not a query each."""
    from django.test.utils import CaptureQueriesContext

    settings.METRICS_SHARD_GAUGES_SECONDS = 60
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner)
    with CaptureQueriesContext(connections["shard_00"]) as first:
        before = scrape()
    with CaptureQueriesContext(connections["shard_00"]) as flood:
        for _ in range(10):
            scrape()
    assert any("transfers_transfer" in q["sql"] for q in first)
    assert not any("transfers_transfer" in q["sql"] for q in flood)
    parked_transfer(owner, payer, payee.id, 10)
    assert total(scrape(), "shardwallet_transfers_parked") == total(before, "shardwallet_transfers_parked")
    settings.METRICS_SHARD_GAUGES_SECONDS = 0  # a new period: the gauges are read again
    assert total(scrape(), "shardwallet_transfers_parked") == total(before, "shardwallet_transfers_parked") + 1
