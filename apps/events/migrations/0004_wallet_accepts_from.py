from django.db import migrations

from apps.events.outbox_sql import WALLET_FUNCTIONS

# A wallet's events carry its `accepts_from`: the same functions, redefined with the rendering
# that has it (the triggers stay as they are).


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0003_entry_objects_read_time"),
        ("ledger", "0014_accepts_from"),
    ]

    operations = [migrations.RunSQL(WALLET_FUNCTIONS, migrations.RunSQL.noop)]
