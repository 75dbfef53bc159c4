from django.db import migrations

from apps.events.outbox_sql import TRANSFER_FUNCTIONS, WALLET_FUNCTIONS

# A transfer's and a wallet's events carry their `description` and `metadata`: the same
# functions, redefined with the rendering that has them (the triggers stay as they are).


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0001_initial"),
        ("transfers", "0011_metadata"),
        ("ledger", "0012_metadata"),
    ]

    operations = [migrations.RunSQL(TRANSFER_FUNCTIONS + WALLET_FUNCTIONS, migrations.RunSQL.noop)]
