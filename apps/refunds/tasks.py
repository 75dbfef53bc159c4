"""Beat job: carry on refunds left pending by a request that died between its steps."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError

from apps.refunds.services import refunds_resume_stalled
from apps.sharding.routing import shard_aliases

log = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def resume_stalled_refunds() -> int:
    settled = 0
    older_than = timedelta(seconds=settings.REFUND_RESUME_AFTER_SECONDS)
    for alias in shard_aliases():
        try:
            settled += refunds_resume_stalled(alias, older_than=older_than)
        except DatabaseError:  # that shard (or a refund's other shard) is down or moving: a later run
            log.warning("refund resumption cannot run on shard", extra={"shard": alias})
    if settled:
        log.info("stalled refunds settled", extra={"count": settled})
    return settled
