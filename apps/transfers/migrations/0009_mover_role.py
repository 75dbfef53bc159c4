"""Only members of the mover's database role may bypass the fence on the transfer tables (see ledger 0009)."""

from django.db import migrations

from apps.sharding.fence_sql import MOVER_ROLE, guard_sql

TRANSFER_TABLES = ("transfers_transfer", "transfers_event", "transfers_idempotency", "transfers_payee_credit")


class Migration(migrations.Migration):
    dependencies = [("transfers", "0008_truncate_guard"), ("ledger", "0009_mover_role")]

    operations = [
        migrations.RunSQL(guard_sql(t, mover_role=MOVER_ROLE), migrations.RunSQL.noop) for t in TRANSFER_TABLES
    ]
