"""A bucket whose rows a finished move deleted is 'moved' (no longer 'fenced'), and TRUNCATE of a
sharded table is refused while a move involves the shard (apps.sharding.fence_sql)."""

from django.db import migrations

from apps.sharding.fence_sql import REFUSE_TRUNCATE_FUNCTION, drop_truncate_guard_sql, truncate_guard_sql

LEDGER_TABLES = ("ledger_wallet", "ledger_entry", "ledger_movement_key")

STATES = """
ALTER TABLE sharding_bucket_owner DROP CONSTRAINT sharding_bucket_owner_state_check;
ALTER TABLE sharding_bucket_owner ADD CONSTRAINT sharding_bucket_owner_state_check
    CHECK (state IN ('owned', 'fenced', 'moved'));
"""

OLD_STATES = """
UPDATE sharding_bucket_owner SET state = 'fenced' WHERE state = 'moved';
ALTER TABLE sharding_bucket_owner DROP CONSTRAINT sharding_bucket_owner_state_check;
ALTER TABLE sharding_bucket_owner ADD CONSTRAINT sharding_bucket_owner_state_check
    CHECK (state IN ('owned', 'fenced'));
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0007_replica_identity_full")]

    operations = [
        migrations.RunSQL(STATES, OLD_STATES),
        migrations.RunSQL(REFUSE_TRUNCATE_FUNCTION, "DROP FUNCTION sharding_refuse_truncate_while_moving()"),
        *(migrations.RunSQL(truncate_guard_sql(t), drop_truncate_guard_sql(t)) for t in LEDGER_TABLES),
    ]
