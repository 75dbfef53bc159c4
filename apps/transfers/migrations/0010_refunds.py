"""Refunds of completed transfers: a refund is a transfer carrying `refund_of`, and the original
counts what its refunds reserved in `amount_refunded` (the guard against refunding more than
was paid, on the original's shard). Both columns are added without rewriting the table, and
the constraint is validated after it is in place, without blocking writes."""

from django.db import migrations, models

CONSTRAINT = "transfer_refunds_within_amount"
CHECK = "amount_refunded >= 0 AND amount_refunded <= amount_minor"


class Migration(migrations.Migration):
    # Each statement commits on its own: the validation then runs under a lock that lets writes go on.
    atomic = False

    dependencies = [
        ("transfers", "0009_mover_role"),
    ]

    operations = [
        migrations.AddField(
            model_name="transfer",
            name="amount_refunded",
            field=models.BigIntegerField(
                db_default=0,
                default=0,
                help_text="Reserved by its refunds that did not fail (pending or succeeded): never above amount_minor.",
            ),
        ),
        migrations.AddField(
            model_name="transfer",
            name="refund_of",
            field=models.UUIDField(
                blank=True,
                help_text="A refund: the completed transfer it pays back (on the payee's shard).",
                null=True,
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddConstraint(
                    model_name="transfer",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("amount_refunded__gte", 0), ("amount_refunded__lte", models.F("amount_minor"))),
                        name=CONSTRAINT,
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f"ALTER TABLE transfers_transfer ADD CONSTRAINT {CONSTRAINT} CHECK ({CHECK}) NOT VALID",
                    f"ALTER TABLE transfers_transfer DROP CONSTRAINT {CONSTRAINT}",
                ),
                migrations.RunSQL(
                    f"ALTER TABLE transfers_transfer VALIDATE CONSTRAINT {CONSTRAINT}", migrations.RunSQL.noop
                ),
            ],
        ),
    ]
