"""The database router: sharded models go to the shard in scope, everything else to `default`."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Model

from apps.sharding.routing import scoped_shard, shard_aliases


class NoShardSelected(RuntimeError):
    """A sharded model was queried without saying which shard.

    Raised rather than guessed: a query on the wrong database returns nothing,
    which looks like a valid answer.
    """


def is_sharded_app(app_label: str) -> bool:
    return app_label in settings.SHARDED_APPS


class ShardRouter:
    """Routes by app: `settings.SHARDED_APPS` live on every shard, all other apps on `default`.

    For a sharded model the shard comes from (in order) the instance being saved or
    followed (`hints["instance"]`), then the `use_shard()` scope. Code should prefer
    explicit `using=`; this router only catches what slips through.
    """

    def _db_for(self, model: type[Model], **hints: Any) -> str:
        if not is_sharded_app(model._meta.app_label):
            return "default"
        instance = hints.get("instance")
        if instance is not None and instance._state.db:
            return instance._state.db
        alias = scoped_shard()
        if alias is None:
            raise NoShardSelected(
                f"{model._meta.label} is sharded: pass using=<shard alias> or wrap the call in use_shard()"
            )
        return alias

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        return self._db_for(model, **hints)

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        return self._db_for(model, **hints)

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        # Relations only within one database: same shard for sharded rows.
        return obj1._state.db == obj2._state.db

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool:
        if is_sharded_app(app_label):
            return db in shard_aliases()
        return db == "default"
