"""The authoritative shard map on the control database: servers, bucket owners, epoch, moves.

Plain tables (no models): the test suite's flushes must not empty them, and every reader
goes through apps.sharding.mapstore. `shards.yaml` seeds them once (migrate_shards).
"""

from django.db import migrations

SCHEMA = """
CREATE TABLE sharding_map_state (
    id smallint PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL CHECK (epoch >= 1),
    bucket_count integer NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE sharding_server (
    alias text PRIMARY KEY,
    host text NOT NULL,
    port integer NOT NULL,
    name text NOT NULL,
    username text NOT NULL,
    password text NOT NULL DEFAULT '',
    added_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE sharding_bucket_assignment (
    bucket integer PRIMARY KEY,
    alias text NOT NULL REFERENCES sharding_server (alias)
);
CREATE TABLE sharding_move (
    id bigserial PRIMARY KEY,
    first_bucket integer NOT NULL,
    last_bucket integer NOT NULL CHECK (last_bucket >= first_bucket),
    source text NOT NULL REFERENCES sharding_server (alias),
    target text NOT NULL REFERENCES sharding_server (alias),
    epoch bigint,
    phase text NOT NULL,
    state text NOT NULL CHECK (state IN ('active', 'done', 'aborted')),
    detail jsonb NOT NULL DEFAULT '{}',
    error text NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
-- One move at a time: epochs then order the moves, which the audit stream relies on.
CREATE UNIQUE INDEX sharding_one_active_move ON sharding_move ((true)) WHERE state = 'active';
"""

DROP = """
DROP TABLE sharding_move;
DROP TABLE sharding_bucket_assignment;
DROP TABLE sharding_server;
DROP TABLE sharding_map_state;
"""


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [migrations.RunSQL(SCHEMA, DROP)]
