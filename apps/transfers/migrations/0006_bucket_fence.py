"""The bucket fence on the transfer tables (see ledger 0006)."""

from django.db import migrations

from apps.sharding.fence_sql import drop_guard_sql, guard_sql

TRANSFER_TABLES = ("transfers_transfer", "transfers_event", "transfers_idempotency", "transfers_payee_credit")


class Migration(migrations.Migration):
    dependencies = [("transfers", "0005_attempts_meaning"), ("ledger", "0006_bucket_fence")]

    operations = [migrations.RunSQL(guard_sql(t), drop_guard_sql(t)) for t in TRANSFER_TABLES]
