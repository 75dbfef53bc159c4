# The audit stream (apps/audit) needs the whole old row of an update or delete: a
# transfer's status before each change. REPLICA IDENTITY FULL writes it to the WAL.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("transfers", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(
            sql=[
                "ALTER TABLE transfers_transfer REPLICA IDENTITY FULL",
                "ALTER TABLE transfers_event REPLICA IDENTITY FULL",
                "ALTER TABLE transfers_payee_credit REPLICA IDENTITY FULL",
            ],
            reverse_sql=[
                "ALTER TABLE transfers_transfer REPLICA IDENTITY DEFAULT",
                "ALTER TABLE transfers_event REPLICA IDENTITY DEFAULT",
                "ALTER TABLE transfers_payee_credit REPLICA IDENTITY DEFAULT",
            ],
        ),
    ]
