from django.db import migrations


class Migration(migrations.Migration):
    """Wallet rows are updated on every movement: leave room on each page for the new version
    (a HOT update: no index touched, the old version pruned in place), and vacuum the table
    early, so a busy wallet's row does not sit behind a growing chain of dead versions."""

    dependencies = [("ledger", "0002_replica_identity_full")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE ledger_wallet SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.0,"
            " autovacuum_vacuum_threshold = 2000, autovacuum_analyze_scale_factor = 0.05)",
            reverse_sql="ALTER TABLE ledger_wallet RESET (fillfactor, autovacuum_vacuum_scale_factor,"
            " autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor)",
        ),
    ]
