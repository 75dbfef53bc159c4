"""Run on the app host after the migrations: the least-privilege logins on every database server,
as a deployment makes them (docs/DEPLOY.md, "Database roles"): one in shardwallet_app, which the
API, the workers and beat connect as (SHARDWALLET_DB_USER), and one in shardwallet_cdc with
REPLICATION, which the CDC connects as. Their password is the servers' own. The API's login
also gets pg_monitor, as docs/DEPLOY.md asks of the login the operators' listener runs as."""

from __future__ import annotations

import os
import sys

import django
import psycopg
from psycopg import sql

APP_LOGIN = "wallet_app"
CDC_LOGIN = "wallet_cdc"


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wallet_project.settings")
    django.setup()
    from django.conf import settings

    from apps.sharding.db_roles import APP_ROLE, CDC_ROLE
    from apps.sharding.shardmap import default_password

    # REPLICATION is an attribute of the login itself: membership does not pass it on.
    logins = [(APP_LOGIN, APP_ROLE, sql.SQL("")), (CDC_LOGIN, CDC_ROLE, sql.SQL(" REPLICATION"))]
    for server in settings.SHARD_MAP.servers:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            for login, group, attributes in logins:
                if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [login]).fetchone():
                    conn.execute(
                        sql.SQL("CREATE ROLE {} LOGIN{} PASSWORD {} IN ROLE {}").format(
                            sql.Identifier(login), attributes, sql.Literal(default_password()), sql.Identifier(group)
                        )
                    )
            # The API's login also serves the operators' listener: /metrics and /health show which
            # standby is synchronous only to a login that may read pg_stat_replication's details.
            conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(APP_LOGIN)))
        print(f"logins: {APP_LOGIN}, {CDC_LOGIN} on {server.alias} ({server.host})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
