"""/health/live, /health/ready, and the worker's and CDC's readiness commands."""

import os
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import Client

from apps.common import health
from apps.common.worker_readiness import FRESH_SECONDS, ready_dir
from tests.factories import ALL_DATABASES
from tests.workers import Worker

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


@pytest.fixture
def fresh_migration_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "_migrated", set())


def test_live_answers_without_looking_at_any_dependency(devstack, settings) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing there: /health/ready fails, /health/live does not
    assert Client().get("/health/live").status_code == 200
    assert Client().get("/health/ready").status_code == 503


# Outside a test transaction: like a server's, the broken connection is replaced by the endpoint itself.
@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_ready_fails_while_a_shard_is_down_and_recovers_when_it_is_back(devstack, fresh_migration_cache) -> None:
    response = Client().get("/health/ready")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ready"
    assert {"default", "shard_00", "shard_01", "redis"} <= set(body["components"])

    cluster = next(c for c in devstack.clusters() if c.server.alias == "shard_01")
    cluster.stop()
    try:
        response = Client().get("/health/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "not_ready"
        assert response.json()["down"] == ["shard_01"]
        assert Client().get("/health/live").status_code == 200
    finally:
        cluster.start()
    response = Client().get("/health/ready")
    assert response.status_code == 200, response.json()


def test_ready_fails_while_a_shard_lacks_a_migration(devstack, fresh_migration_cache) -> None:
    with connections["shard_00"].cursor() as cursor:
        cursor.execute(
            "DELETE FROM django_migrations WHERE id = (SELECT max(id) FROM django_migrations WHERE app = 'transfers')"
            " RETURNING app, name, applied"
        )
        removed = cursor.fetchone()
    try:
        response = Client().get("/health/ready")
        assert response.status_code == 503
        assert response.json()["down"] == ["shard_00"]
        error = response.json()["components"]["shard_00"]["error"]
        assert f"1 migration(s) not applied: {removed[0]}.{removed[1]}" in error
    finally:
        with connections["shard_00"].cursor() as cursor:
            cursor.execute("INSERT INTO django_migrations (app, name, applied) VALUES (%s, %s, %s)", removed)
    assert Client().get("/health/ready").status_code == 200


def test_worker_ready_follows_a_real_worker(devstack) -> None:
    worker = Worker(concurrency=1)
    try:
        deadline = time.monotonic() + 15
        while not (beats := list(ready_dir().glob(f"{worker.name}@*"))):
            assert time.monotonic() < deadline, worker.log_text()
            time.sleep(0.2)
        node = beats[0].name
        call_command("worker_ready", name=node)
    finally:
        worker.stop()
    with pytest.raises(CommandError, match="no saga worker"):
        call_command("worker_ready", name=node)


def test_worker_ready_refuses_a_stale_beat(devstack, settings, tmp_path) -> None:
    settings.DEVSTACK_DIR = tmp_path
    with pytest.raises(CommandError, match="none has started consuming"):
        call_command("worker_ready")
    beat = ready_dir() / "celery@gone"
    beat.parent.mkdir(parents=True)
    beat.touch()
    call_command("worker_ready")
    old = time.time() - FRESH_SECONDS - 1
    os.utime(beat, (old, old))
    with pytest.raises(CommandError, match="stale: celery@gone"):
        call_command("worker_ready")
