"""The operators' trail, copied from the control database into the audit store by the CDC process.

Every operator action (the admin's and the command line's, apps.operators) is a row of
`operators_action` on the control database, which the application writes. A copy in
`audit.operator_actions` is out of its reach: the CDC's store takes inserts only, and a row is
copied when it appears and once more when its outcome is known (`version` 1 replaces 0). A row
edited in the control database after that is not copied again, so the store keeps what was
recorded. The copier looks every AUDIT_OPERATOR_TRAIL_SECONDS, at rows past the highest id
it has and at the ones it copied while they were still running.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from django.db import DatabaseError, connections

log = logging.getLogger(__name__)

TABLE = "audit.operator_actions"
COLUMNS = [
    "id", "actor", "action", "target_id", "subject", "shard", "reason", "outcome", "detail", "created_at",
    "finished_at", "copied_at", "version",
]  # fmt: skip
_NEW_OR_RUNNING = """
SELECT id, actor_username, action, target_id, subject, shard, reason, outcome, detail, created_at, finished_at
  FROM operators_action WHERE id > %s OR id = ANY(%s) ORDER BY id LIMIT 1000
"""


class OperatorTrailCopier:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.high_water = 0
        self.running: set[int] = set()
        self._loaded = False

    def _load(self) -> None:
        """Where the store is: its highest id, and the actions it holds as still running."""
        (high,) = self.client.query("SELECT max(id) FROM audit.operator_actions").result_rows[0]
        rows = self.client.query("SELECT id FROM audit.operator_actions FINAL WHERE version = 0").result_rows
        self.high_water, self.running, self._loaded = int(high or 0), {int(r[0]) for r in rows}, True

    def copy_once(self) -> int:
        """Copy what is new or has ended since the last look; the number of rows written."""
        if not self._loaded:
            self._load()
        written = 0
        while True:
            with connections["default"].cursor() as cursor:
                cursor.execute(_NEW_OR_RUNNING, [self.high_water, sorted(self.running)])
                rows = cursor.fetchall()
            fresh = [r for r in rows if r[0] > self.high_water or r[7] != "pending"]
            if fresh:
                now = datetime.now(tz=UTC)
                values = [[*r[:10], r[10], now, 0 if r[7] == "pending" else 1] for r in fresh]
                self.client.insert(TABLE, values, column_names=COLUMNS)
                for row in fresh:
                    if row[7] == "pending":
                        self.running.add(row[0])
                    else:
                        self.running.discard(row[0])
                written += len(fresh)
            past = [r[0] for r in rows if r[0] > self.high_water]
            if not past:
                break
            self.high_water = max(past)
        return written

    def run(self, stop: threading.Event, every: float) -> None:
        while not stop.wait(every):
            try:
                connections["default"].close_if_unusable_or_obsolete()
                self.copy_once()
            except DatabaseError as exc:
                log.warning("cdc could not read the operators' trail: %s", exc)
                connections["default"].close()
            except Exception:
                log.exception("cdc could not copy the operators' trail; trying again")
