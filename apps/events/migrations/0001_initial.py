from django.contrib.postgres.indexes import BrinIndex
from django.db import migrations, models

from apps.events.outbox_sql import DROP, INSTALL
from apps.sharding.fence_sql import MOVER_ROLE, drop_guard_sql, drop_truncate_guard_sql, guard_sql, truncate_guard_sql

# Like every sharded table: the bucket fence (the mover's bypass for its role only), TRUNCATE
# refused during a move, and every column in the replica identity for the move's publication.
FENCED = [
    migrations.RunSQL(guard_sql("events_event"), drop_guard_sql("events_event")),
    migrations.RunSQL(guard_sql("events_event", mover_role=MOVER_ROLE), migrations.RunSQL.noop),
    migrations.RunSQL(truncate_guard_sql("events_event"), drop_truncate_guard_sql("events_event")),
    migrations.RunSQL(
        "ALTER TABLE events_event REPLICA IDENTITY FULL", "ALTER TABLE events_event REPLICA IDENTITY DEFAULT"
    ),
]


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("transfers", "0010_refunds"),
        ("ledger", "0011_payer_may_refund"),
        ("holds", "0001_initial"),
        ("refunds", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="Event",
            fields=[
                ("id", models.UUIDField(editable=False, primary_key=True, serialize=False)),
                ("client_id", models.BigIntegerField(help_text="The API client the event is for (control database).")),
                ("type", models.CharField(max_length=40)),
                ("object_id", models.UUIDField(help_text="The id of the object in `data`.")),
                ("seq", models.IntegerField(help_text="1, 2, 3... per object, in the order of its changes.")),
                ("data", models.TextField(help_text="The object as the API renders it, at the change (JSON).")),
                ("created_at", models.DateTimeField()),
                (
                    "txid",
                    models.BigIntegerField(help_text="The writing transaction's id: the dispatcher's cursor follows it."),
                ),
            ],
            options={
                "db_table": "events_event",
                "constraints": [models.UniqueConstraint(fields=("object_id", "seq"), name="event_object_seq")],
                "indexes": [
                    models.Index(fields=["client_id", "-id"], name="event_client_newest"),
                    BrinIndex(fields=["txid"], name="event_dispatch_order", autosummarize=True),
                ],
            },
        ),
        *FENCED,
        migrations.RunSQL(INSTALL, DROP),
    ]
