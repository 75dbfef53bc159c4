from django.db import migrations


class Migration(migrations.Migration):
    """The admin's name for the list: "Ledger entries", not "Ledger entrys" (no SQL)."""

    dependencies = [("ledger", "0004_movement_key")]

    operations = [
        migrations.AlterModelOptions(name="ledgerentry", options={"verbose_name_plural": "ledger entries"}),
    ]
