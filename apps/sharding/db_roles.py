"""Least-privilege database roles, granted by `migrate_shards` on the control database and every shard.

- `shardwallet_app`: what the API, the workers and beat need, and nothing else: read and write
  rows of the service's tables and use their sequences. No DDL (the tables belong to the
  migrations' role), no TRUNCATE, no COPY TO/FROM PROGRAM or files (superuser only).
- `shardwallet_cdc`: read every table (the initial snapshot, the slot checks), write its slot
  registry on each shard (made by the shards' migrations) and answer operators' requests on the
  control database. The stream needs REPLICATION, a role attribute PostgreSQL does not pass
  through membership: the CDC's login is `LOGIN REPLICATION IN ROLE shardwallet_cdc`. The
  publication is created by `migrate_shards`, as the tables' owner.
- `shardwallet_mover` (apps.sharding.fence_sql): writes past the fence during a move.

They are group roles (NOLOGIN): the deployment makes a login in each with its own password
(docs/DEPLOY.md, "Database roles") and gives each process its login with SHARDWALLET_DB_USER.
Granted again at every `migrate_shards`, so tables a release adds are covered. A migrating
user without CREATEROLE leaves them to the DBA: a notice, not an error.
"""

from __future__ import annotations

from django.db import connections

APP_ROLE = "shardwallet_app"
CDC_ROLE = "shardwallet_cdc"

GRANT_SQL = f"""
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['{APP_ROLE}', '{CDC_ROLE}'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE 'role % not created (no CREATEROLE): %', role_name, SQLERRM;
                CONTINUE;
            END;
        END IF;
        EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', role_name);
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE};
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE};
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{CDC_ROLE}') THEN
        GRANT SELECT ON ALL TABLES IN SCHEMA public TO {CDC_ROLE};
        -- Its own rows: the slot registry on a shard, operators' requests on the control database.
        IF to_regclass('shardwallet_cdc_slot') IS NOT NULL THEN
            GRANT INSERT, UPDATE ON shardwallet_cdc_slot TO {CDC_ROLE};
        END IF;
        IF to_regclass('audit_cdcrequest') IS NOT NULL THEN
            GRANT UPDATE ON audit_cdcrequest TO {CDC_ROLE};
        END IF;
    END IF;
END
$$;
"""  # noqa: S608 (constant role names)


def grant_roles(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(GRANT_SQL)
