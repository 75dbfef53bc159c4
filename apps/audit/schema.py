"""The audit store's schema as code: numbered migrations applied once each, in order.

`clickhouse_migrations/NNNN_name.sql` holds statements separated by `;` at a line end.
Each statement is written to be re-runnable (IF NOT EXISTS / OR REPLACE), so a migration
interrupted half-way is simply applied again; `audit.schema_migrations` records the
ones that completed. The same files run on chDB and on a ClickHouse server.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "clickhouse_migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

TRACKING_TABLE = """
CREATE TABLE IF NOT EXISTS audit.schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def statements(self) -> list[str]:
        text = "\n".join(line for line in self.path.read_text().splitlines() if not line.lstrip().startswith("--"))
        return [s.strip() for s in re.split(r";\s*$", text, flags=re.MULTILINE) if s.strip()]


def migrations() -> list[Migration]:
    found = []
    for path in sorted(MIGRATIONS_DIR.iterdir()):
        match = _NAME.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), path.stem, path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two ClickHouse migrations share a number: {versions}")
    return found


def applied_versions(client: Any) -> set[int]:
    rows = client.query("SELECT version FROM audit.schema_migrations FINAL").result_rows
    return {int(v) for (v,) in rows}


def migrate(client: Any) -> list[str]:
    """Apply every migration not yet recorded; return the names applied."""
    client.command("CREATE DATABASE IF NOT EXISTS audit")
    client.command(TRACKING_TABLE)
    done = applied_versions(client)
    applied = []
    for migration in migrations():
        if migration.version in done:
            continue
        for statement in migration.statements():
            client.command(statement)
        client.insert("audit.schema_migrations", [[migration.version, migration.name]], ["version", "name"])
        log.info("applied ClickHouse migration %s", migration.name)
        applied.append(migration.name)
    return applied
