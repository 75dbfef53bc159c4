"""The sweeper holds back while the broker has a backlog, and re-drives once it has drained
(or, for a transfer stalled far longer than the queue explains, during the backlog too)."""

from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from apps.transfers.models import Transfer
from apps.transfers.tasks import BACKLOG_PATIENCE, broker_backlog, sweep_stalled_transfers
from tests.factories import ALL_DATABASES, create_transfer, make_client, make_wallet
from tests.workers import flush_redis

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)

QUEUE = "celery"


def test_no_re_drive_while_the_queue_holds_a_backlog(devstack, settings) -> None:
    settings.SAGA_SWEEP_MAX_BACKLOG = 5
    owner, _ = make_client()
    payer, payee = make_wallet(owner, funded=500, shard="shard_00"), make_wallet(owner, shard="shard_01")
    transfer = create_transfer(owner, payer, payee.id, 200)
    # Stalled for two windows: re-driven at once without a backlog, not during one.
    stalled_since = timezone.now() - timedelta(seconds=2 * settings.SAGA_STALLED_AFTER_SECONDS)
    Transfer.objects.using("shard_00").filter(id=transfer.id).update(updated_at=stalled_since)
    broker = redis.Redis.from_url(settings.REDIS_URL)
    flush_redis()  # no worker runs: nothing but what the test puts there is queued
    try:
        broker.rpush(QUEUE, *[b"queued elsewhere"] * 5)
        assert broker_backlog() == 5
        assert sweep_stalled_transfers() == 0
        assert Transfer.objects.using("shard_00").get(id=transfer.id).updated_at == stalled_since
        assert broker.llen(QUEUE) == 5

        broker.ltrim(QUEUE, 0, 3)  # four left: under the bound
        assert sweep_stalled_transfers() == 1
        assert Transfer.objects.using("shard_00").get(id=transfer.id).updated_at > stalled_since
        assert broker.llen(QUEUE) == 5  # its re-drive was sent

        # Stalled far longer than any queue explains: re-driven during a backlog too.
        broker.rpush(QUEUE, *[b"queued elsewhere"] * 5)
        long_ago = timezone.now() - timedelta(seconds=(BACKLOG_PATIENCE + 1) * settings.SAGA_STALLED_AFTER_SECONDS)
        Transfer.objects.using("shard_00").filter(id=transfer.id).update(updated_at=long_ago)
        assert sweep_stalled_transfers() == 1
        assert broker.llen(QUEUE) == 11
    finally:
        flush_redis()
