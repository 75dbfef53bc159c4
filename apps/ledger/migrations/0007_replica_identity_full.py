# See transfers 0007: a move's publication filters by the wallet's bucket.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("ledger", "0006_bucket_fence")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE ledger_movement_key REPLICA IDENTITY FULL",
            "ALTER TABLE ledger_movement_key REPLICA IDENTITY DEFAULT",
        )
    ]
