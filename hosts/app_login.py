"""Run on the app host after the migrations: a login in shardwallet_app on every database server,
which the API, the workers and beat then connect as (SHARDWALLET_DB_USER), as a least-privilege
deployment does (docs/DEPLOY.md, "Database roles"). Its password is the servers' own."""

from __future__ import annotations

import os
import sys

import django
import psycopg
from psycopg import sql

APP_LOGIN = "wallet_app"


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wallet_project.settings")
    django.setup()
    from django.conf import settings

    from apps.sharding.db_roles import APP_ROLE
    from apps.sharding.shardmap import default_password

    for server in settings.SHARD_MAP.servers:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_LOGIN]).fetchone():
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                        sql.Identifier(APP_LOGIN), sql.Literal(default_password()), sql.Identifier(APP_ROLE)
                    )
                )
        print(f"app login: {APP_LOGIN} on {server.alias} ({server.host})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
