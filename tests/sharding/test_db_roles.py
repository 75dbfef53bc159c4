"""Least-privilege roles: the API's login (a member of shardwallet_app) moves money and can do nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from apps.sharding.db_roles import APP_ROLE, CDC_ROLE
from tests.factories import ALL_DATABASES

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

PROBE = "sw_app_probe"


def _as_superuser(alias: str) -> psycopg.Connection:
    server = settings.SHARD_MAP.shards.get(alias) or settings.SHARD_MAP.control
    return psycopg.connect(host=server.host, port=server.port, dbname=server.name, user="postgres", autocommit=True)


@pytest.fixture
def app_login() -> str:
    """A login in shardwallet_app on every database of the stack (trust auth: no password)."""
    for alias in ("default", *settings.SHARD_MAP.shards):
        with _as_superuser(alias) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [PROBE]).fetchone()
            if not exists:
                conn.execute(f"CREATE ROLE {PROBE} LOGIN IN ROLE {APP_ROLE}")
    return PROBE


def test_migrate_made_the_group_roles_and_the_publication() -> None:
    with _as_superuser("shard_00") as conn:
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE NOT rolcanlogin").fetchall()}
        published = conn.execute(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = %s", [settings.AUDIT_PUBLICATION]
        ).fetchone()
    assert {APP_ROLE, CDC_ROLE, "shardwallet_mover"} <= roles
    assert published is not None
    assert published[0] == len(settings.AUDIT_TABLES)


def test_the_app_login_cannot_run_programs_change_tables_or_truncate(app_login: str, tmp_path: Path) -> None:
    server = settings.SHARD_MAP.shards["shard_00"]
    marker = tmp_path / "owned"
    refused = [
        f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'",
        "ALTER TABLE ledger_wallet ADD COLUMN owned integer",
        "ALTER TABLE ledger_wallet DISABLE TRIGGER ALL",
        "CREATE TABLE owned (x integer)",
        "TRUNCATE ledger_entry",
        f"COPY ledger_wallet TO '{tmp_path / 'wallets'}'",
    ]
    with psycopg.connect(
        host=server.host, port=server.port, dbname=server.name, user=app_login, autocommit=True
    ) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_wallet").fetchone() is not None
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert not marker.exists()


MONEY_FLOW = """
from apps.sharding.routing import alias_for_id
from apps.transfers.saga import transfer_advance
from tests.factories import create_transfer, make_client, make_wallet, wallet_balance

owner, _ = make_client("least-privilege")
payer = make_wallet(owner, funded=1000, shard="shard_00")
near = make_wallet(owner, shard="shard_00")
far = make_wallet(owner, shard="shard_01")
same = create_transfer(owner, payer, near.id, 100)
cross = create_transfer(owner, payer, far.id, 250)
cross = transfer_advance(cross.id)
print(same.status, cross.status, wallet_balance(payer.id), wallet_balance(near.id), wallet_balance(far.id))
"""


def test_the_money_path_runs_as_the_app_login(app_login: str) -> None:
    """Wallets, deposits, a same-shard and a cross-shard transfer (the saga's three steps, the
    outbox's triggers, the idempotency records) with nothing but shardwallet_app's rights."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test", "SHARDWALLET_DB_USER": app_login}
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "--verbosity", "0", "-c", MONEY_FLOW],
        env=env, capture_output=True, text=True, timeout=120, cwd=settings.BASE_DIR,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["completed", "completed", "650", "100", "250"]
