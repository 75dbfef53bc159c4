"""TRUNCATE of the transfer tables is refused while a move involves the shard (see ledger 0008)."""

from django.db import migrations

from apps.sharding.fence_sql import drop_truncate_guard_sql, truncate_guard_sql

TRANSFER_TABLES = ("transfers_transfer", "transfers_event", "transfers_idempotency", "transfers_payee_credit")


class Migration(migrations.Migration):
    dependencies = [("transfers", "0007_replica_identity_full"), ("ledger", "0008_truncate_guard")]

    operations = [migrations.RunSQL(truncate_guard_sql(t), drop_truncate_guard_sql(t)) for t in TRANSFER_TABLES]
