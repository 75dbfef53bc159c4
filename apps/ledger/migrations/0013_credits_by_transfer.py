"""A wallet's received transfers, by transfer id: an index of its credits only (built without
blocking writes to the ledger)."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models
from django.db.models.functions import Collate


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction

    dependencies = [
        ("ledger", "0012_metadata"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="ledgerentry",
            index=models.Index(
                models.F("wallet"),
                Collate("reference", "C"),
                condition=models.Q(kind="credit"),
                name="entry_credits_by_transfer",
            ),
        ),
    ]
