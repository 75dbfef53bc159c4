"""A ledger entry's event stores no object: the entry never changes and lives beside it, so
readers render the entry itself (its events written before keep theirs, which are the same)."""

from django.db import migrations, models

from apps.events.outbox_sql import ENTRY_FUNCTIONS


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0002_metadata"),
    ]

    operations = [
        migrations.AlterField(
            model_name="event",
            name="data",
            field=models.TextField(
                help_text="The object as the API renders it, at the change (JSON); null for a ledger entry's event,"
                " whose entry never changes and is rendered when read.",
                null=True,
            ),
        ),
        migrations.RunSQL(ENTRY_FUNCTIONS, migrations.RunSQL.noop),
    ]
