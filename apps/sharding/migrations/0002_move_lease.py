"""The move's lease: which process last took it, and a token that every journal write checks."""

from django.db import migrations

SCHEMA = """
ALTER TABLE sharding_move ADD COLUMN lease_token bigint NOT NULL DEFAULT 0;
ALTER TABLE sharding_move ADD COLUMN lease_holder text NOT NULL DEFAULT '';
ALTER TABLE sharding_move ADD COLUMN lease_since timestamptz;
"""

DROP = """
ALTER TABLE sharding_move DROP COLUMN lease_since;
ALTER TABLE sharding_move DROP COLUMN lease_holder;
ALTER TABLE sharding_move DROP COLUMN lease_token;
"""


class Migration(migrations.Migration):
    dependencies = [("sharding", "0001_shard_map")]
    operations = [migrations.RunSQL(SCHEMA, DROP)]
