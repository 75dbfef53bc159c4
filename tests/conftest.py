"""The test session brings up its own throw-away stack (tests/shards.test.yaml, var/test)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from apps.sharding.devstack import Devstack, PostgresCluster
from tests.factories import api_for, make_client
from tests.stack_guard import stack_refusals
from tests.workers import Worker, flush_redis


def pytest_sessionstart(session: pytest.Session) -> None:
    problems = stack_refusals(
        settings.SHARD_MAP, Path(settings.SHARDS_FILE), Path(settings.DEVSTACK_DIR), settings.REDIS_URL,
        Path(settings.BASE_DIR),
    )  # fmt: skip
    if problems:
        pytest.exit(
            "refusing to run the tests on a stack that is not their throw-away one (they empty its tables and"
            " flush its Redis):\n  - " + "\n  - ".join(problems) + "\nUnset the SHARDWALLET_* variables exported"
            " for `make run`, or point them at a copy of tests/shards.test.yaml with its own ports.",
            returncode=3,
        )


@pytest.fixture(scope="session")
def devstack() -> Iterator[Devstack]:
    stack = Devstack(settings.SHARD_MAP, settings.DEVSTACK_DIR, settings.REDIS_URL)
    was_running = all(c.is_running() for c in stack.clusters()) and stack.redis_answers()
    stack.up()
    yield stack
    connections.close_all()
    # Throw-away: a stack this session started is stopped and deleted; one that was
    # already up (a developer iterating) is left as it was.
    if not was_running and os.environ.get("SHARDWALLET_KEEP_TEST_STACK") != "1":
        stack.down(purge=True)
    # This session's multiprocess metrics files (settings_test made the directory for it).
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.basename(metrics_dir) == f"metrics-{os.getpid()}":
        shutil.rmtree(metrics_dir, ignore_errors=True)


@pytest.fixture
def payee_shard(devstack: Devstack) -> Iterator[PostgresCluster]:
    """shard_01's server (the payee's shard in the fault tests), restarted after the test if stopped."""
    cluster = next(c for c in devstack.clusters() if c.server.alias == "shard_01")
    yield cluster
    if not cluster.is_running():
        cluster.start()
    connections["shard_01"].close()


@pytest.fixture(scope="session")
def django_db_setup(devstack: Devstack, django_db_blocker: Any) -> None:
    # The stack's databases are already the throw-away test databases: migrate them in place.
    with django_db_blocker.unblock():
        call_command("migrate_shards", verbosity=0)


@pytest.fixture
def client_and_key() -> tuple[Any, str]:
    return make_client("acme")


@pytest.fixture
def api(client_and_key: tuple[Any, str]) -> Any:
    return api_for(client_and_key[1])


@pytest.fixture
def workers(devstack: Devstack) -> Iterator[list[Worker]]:
    """Celery workers a test starts: all stopped afterwards, and the broker emptied before and after."""
    flush_redis()
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()
    flush_redis()
