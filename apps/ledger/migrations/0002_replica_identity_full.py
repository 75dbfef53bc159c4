# The audit stream (apps/audit) needs the whole old row of an update or delete: the
# balance before a change, the wallet's status before a freeze. REPLICA IDENTITY FULL
# writes it to the WAL; inserts, the bulk of the traffic, cost nothing more.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("ledger", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(
            sql=[
                "ALTER TABLE ledger_wallet REPLICA IDENTITY FULL",
                "ALTER TABLE ledger_entry REPLICA IDENTITY FULL",
            ],
            reverse_sql=[
                "ALTER TABLE ledger_wallet REPLICA IDENTITY DEFAULT",
                "ALTER TABLE ledger_entry REPLICA IDENTITY DEFAULT",
            ],
        ),
    ]
