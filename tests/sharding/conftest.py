"""Fixtures of the sharding tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from apps.sharding.mapstore import live_map
from apps.sharding.routing import refresh_shard_map, shard_map
from tests.factories import raw_query
from tests.sharding.moving import restore_file_layout

ADDED_SHARD = "shard_02"


def added_shard_port() -> int:
    return settings.SHARD_MAP.control.port + 3


@pytest.fixture
def file_layout_afterwards(devstack: Any) -> Iterator[None]:
    """Tests that move buckets: the file's layout back afterwards, and this process's map forgotten."""
    yield
    restore_file_layout()
    live_map.forget()


@pytest.fixture
def added_shard(devstack: Any, django_db_blocker: Any) -> Iterator[str]:
    """shard_02, added to the test stack's map by `shard_add`, removed (and stopped) afterwards.

    The test case allows only the databases that existed when it started; the shard added
    during the test is reached through Django's own connection handling, as in production.
    """
    alias, port = ADDED_SHARD, added_shard_port()
    real_ensure_connection = django_db_blocker._real_ensure_connection
    with mock.patch.object(BaseDatabaseWrapper, "ensure_connection", real_ensure_connection):
        call_command("shard_add", alias, "--host", "127.0.0.1", "--port", str(port), "--name", "shardwallet")
        yield alias
        restore_file_layout()
    cluster = devstack.cluster(shard_map().shards[alias])
    try:
        raw_query("default", "DELETE FROM sharding_move WHERE %s IN (source, target)", [alias])
        raw_query("default", "DELETE FROM sharding_server WHERE alias = %s", [alias])
        raw_query("default", "UPDATE sharding_map_state SET epoch = epoch + 1")
        refresh_shard_map()
        connections[alias].close()
        del connections[alias]  # this thread's wrapper too: a later test may reuse the alias elsewhere
        # Forget the alias in this process too: later test cases list every database they may use.
        connections.settings.pop(alias, None)
        settings.DATABASES.pop(alias, None)
    finally:
        cluster.stop()
        shutil.rmtree(cluster.data_dir, ignore_errors=True)
