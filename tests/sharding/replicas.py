"""A primary and its streaming standby, each a PostgreSQL server of its own on a free port."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from apps.sharding.devstack import PostgresCluster
from apps.sharding.shardmap import DatabaseServer
from tests.factories import free_port


@contextmanager
def primary_and_standby(alias: str, database: str, directory: str) -> Iterator[tuple[PostgresCluster, PostgresCluster]]:
    """Both running, `database` made on the primary; afterwards both stopped and their data gone."""
    primary_port, standby_port = free_port(), free_port()
    root = Path(settings.DEVSTACK_DIR) / f"{directory}-{primary_port}"
    primary = PostgresCluster(DatabaseServer(alias, "127.0.0.1", primary_port, database), root / "primary")
    standby = PostgresCluster(DatabaseServer(alias, "127.0.0.1", standby_port, database), root / "standby")
    primary.initialise()
    primary.start()
    try:
        primary.ensure_database()
        standby.initialise_standby(primary.server)
        standby.start()
        yield primary, standby
    finally:
        for cluster in (standby, primary):
            if cluster.is_running():
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
