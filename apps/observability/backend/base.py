"""Django's PostgreSQL backend, counting errors per database alias in shardwallet_db_errors_total,
and taking each new connection's password from the shard map's server (apps.sharding.shardmap).

Errors are counted where they happen, in the connection: failing to connect (a shard is
down) and failing queries, labelled with the alias so a dashboard shows which shard.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base

from apps.observability.metrics import DB_ERRORS


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute_wrappers.append(self._count_query_errors)

    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        server = self.settings_dict.get("SHARDWALLET_SERVER")
        if server is not None:
            params["password"] = server.secret  # read now: a rotated password file needs no restart
        return params

    def connect(self) -> None:
        try:
            super().connect()
        except Exception as exc:
            DB_ERRORS.labels(database=self.alias, error=type(exc).__name__).inc()
            raise

    def _count_query_errors(self, execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        try:
            return execute(sql, params, many, context)
        except Exception as exc:
            DB_ERRORS.labels(database=self.alias, error=type(exc).__name__).inc()
            raise
