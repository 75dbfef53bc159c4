"""Only members of the mover's database role may bypass the fence (apps.sharding.fence_sql)."""

from django.db import migrations

from apps.sharding.fence_sql import CREATE_MOVER_ROLE, MOVER_ROLE, guard_sql

LEDGER_TABLES = ("ledger_wallet", "ledger_entry", "ledger_movement_key")


class Migration(migrations.Migration):
    dependencies = [("ledger", "0008_truncate_guard")]

    # Not reversed: the functions with the role check are stricter, and the role may be granted.
    operations = [
        migrations.RunSQL(CREATE_MOVER_ROLE, migrations.RunSQL.noop),
        *(migrations.RunSQL(guard_sql(t, mover_role=MOVER_ROLE), migrations.RunSQL.noop) for t in LEDGER_TABLES),
    ]
