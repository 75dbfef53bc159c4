"""A shard server's cluster members ("host:port" each), for servers added with shard_add (apps.sharding.shardmap)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("sharding", "0002_move_lease")]
    operations = [
        migrations.RunSQL(
            "ALTER TABLE sharding_server ADD COLUMN members text[] NOT NULL DEFAULT '{}'",
            "ALTER TABLE sharding_server DROP COLUMN members",
        )
    ]
