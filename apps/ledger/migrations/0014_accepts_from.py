from django.db import migrations, models

# A constant default adds the column without rewriting the table. The CHECK is added NOT VALID
# (no scan under the table's exclusive lock) and validated after, under a lock that lets
# payments go on.

_ADD_CHECK = """
ALTER TABLE ledger_wallet ADD CONSTRAINT wallet_accepts_from_known
    CHECK (accepts_from IN ('any', 'same_client')) NOT VALID
"""
_VALIDATE_CHECK = "ALTER TABLE ledger_wallet VALIDATE CONSTRAINT wallet_accepts_from_known"


class Migration(migrations.Migration):
    atomic = False  # each statement commits on its own: the validation runs after the exclusive lock is gone
    dependencies = [
        ("ledger", "0013_credits_by_transfer"),
    ]

    operations = [
        migrations.AddField(
            model_name="wallet",
            name="accepts_from",
            field=models.CharField(
                choices=[("any", "Any"), ("same_client", "Same Client")],
                db_default="any",
                default="any",
                help_text="Set by the owner: whose transfers the wallet takes (any client's, or only its owner's).",
                max_length=11,
            ),
        ),
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(_ADD_CHECK, "ALTER TABLE ledger_wallet DROP CONSTRAINT wallet_accepts_from_known"),
                migrations.RunSQL(_VALIDATE_CHECK, migrations.RunSQL.noop),
            ],
            state_operations=[
                migrations.AddConstraint(
                    model_name="wallet",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("accepts_from__in", ["any", "same_client"])),
                        name="wallet_accepts_from_known",
                    ),
                ),
            ],
        ),
    ]
