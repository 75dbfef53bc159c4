"""Beat job: expire holds past their time, shard by shard."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import DatabaseError

from apps.holds.services import holds_expire_due
from apps.sharding.routing import shard_aliases

log = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def expire_holds() -> int:
    expired = 0
    for alias in shard_aliases():
        try:
            expired += holds_expire_due(alias)
        except DatabaseError:  # that shard is down or moving: its holds expire at a later run
            log.warning("hold expiry cannot read shard", extra={"shard": alias})
    if expired:
        log.info("holds expired", extra={"count": expired})
    return expired
