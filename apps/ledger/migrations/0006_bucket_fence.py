"""The bucket fence on every shard: a write to a row whose bucket the shard does not serve is refused.

`sharding_bucket_owner` lists the buckets the shard serves (`owned`) or has handed over
(`fenced`); a bucket absent from it is not served here. A trigger on each sharded table
checks the row's bucket in the writing transaction itself, holding the bucket's advisory
lock shared until commit, so the mover's fence (which takes it exclusively) waits for
every write in flight and no write of a fenced bucket can commit after it.
"""

from django.db import migrations

from apps.sharding.fence_sql import drop_guard_sql, guard_sql

LEDGER_TABLES = ("ledger_wallet", "ledger_entry", "ledger_movement_key")

SCHEMA = """
CREATE TABLE sharding_bucket_owner (
    bucket integer PRIMARY KEY CHECK (bucket BETWEEN 0 AND 4095),
    state text NOT NULL CHECK (state IN ('owned', 'fenced')),
    epoch bigint NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
-- Which shard of the map this database is, written once by migrate_shards.
CREATE TABLE sharding_shard_identity (
    alias text PRIMARY KEY,
    seeded_at timestamptz NOT NULL DEFAULT now()
);
-- The move journal as this shard saw it: captured by the audit stream. `wal_lsn` is taken
-- inside the writing transaction, so every later commit of this shard has a higher LSN.
CREATE TABLE sharding_move_marker (
    id bigserial PRIMARY KEY,
    move_id bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('fence', 'own', 'unfence')),
    first_bucket integer NOT NULL,
    last_bucket integer NOT NULL,
    source text NOT NULL,
    target text NOT NULL,
    epoch bigint NOT NULL,
    wal_lsn pg_lsn NOT NULL DEFAULT pg_current_wal_insert_lsn(),
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE sharding_move_marker REPLICA IDENTITY FULL;

CREATE FUNCTION sharding_bucket(id uuid) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT ((get_byte(uuid_send(id), 6) & 15) << 8) | get_byte(uuid_send(id), 7) $$;

-- True when this shard serves the row's bucket: scans that act on rows (drains, the
-- sweeper, purges, checks) skip copies that are arriving or that a move left behind.
CREATE FUNCTION sharding_serves(id uuid) RETURNS boolean
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    AS $$ SELECT EXISTS (SELECT 1 FROM sharding_bucket_owner o
                         WHERE o.bucket = sharding_bucket(id) AND o.state = 'owned') $$;
"""

DROP_SCHEMA = """
DROP FUNCTION sharding_serves(uuid);
DROP FUNCTION sharding_bucket(uuid);
DROP TABLE sharding_move_marker;
DROP TABLE sharding_shard_identity;
DROP TABLE sharding_bucket_owner;
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0005_ledger_entry_plural")]

    operations = [
        migrations.RunSQL(SCHEMA, DROP_SCHEMA),
        *(migrations.RunSQL(guard_sql(t), drop_guard_sql(t)) for t in LEDGER_TABLES),
    ]
