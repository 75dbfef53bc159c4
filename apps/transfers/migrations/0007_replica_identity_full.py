# A move's publication filters every sharded table by bucket; PostgreSQL then requires the
# filter's columns in the replica identity for updates and deletes to be published (without
# it they fail on the source while the move runs). The other tables have been FULL since 0002.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("transfers", "0006_bucket_fence")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE transfers_idempotency REPLICA IDENTITY FULL",
            "ALTER TABLE transfers_idempotency REPLICA IDENTITY DEFAULT",
        )
    ]
