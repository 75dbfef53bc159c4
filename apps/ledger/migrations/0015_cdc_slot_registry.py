from django.db import migrations

# The audit stream's slot registry on each shard (apps.audit.stream_state): which store created
# which slot, where its heartbeats and its last release were. The CDC used to create it itself;
# made here, by the tables' owner, the CDC's login needs no right to create tables (it is
# granted reads and writes of it by migrate_shards: apps.sharding.db_roles). A shard where a
# CDC already made it keeps it as it is.
REGISTRY = """
CREATE TABLE IF NOT EXISTS shardwallet_cdc_slot (
    slot_name text PRIMARY KEY,
    store_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE shardwallet_cdc_slot ADD COLUMN IF NOT EXISTS heartbeat_lsns pg_lsn[] NOT NULL DEFAULT '{}';
ALTER TABLE shardwallet_cdc_slot ADD COLUMN IF NOT EXISTS released_lsn pg_lsn;
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0014_accepts_from")]

    operations = [migrations.RunSQL(REGISTRY, "DROP TABLE IF EXISTS shardwallet_cdc_slot")]
