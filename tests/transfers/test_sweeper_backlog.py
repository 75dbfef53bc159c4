"""The sweeper holds back while the broker has a backlog, and re-drives once it has drained
(or, for a transfer stalled far longer than the queue explains, during the backlog too): by the
time the queue's oldest message has waited, and by the queue's length for messages without it."""

import json
import time
import uuid
from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from apps.common.queue_age import SENT_AT_HEADER, oldest_waiting_seconds
from apps.transfers.models import Transfer
from apps.transfers.tasks import BACKLOG_PATIENCE, advance_transfer, broker_backlog, sweep_stalled_transfers
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


def sent(seconds_ago: float) -> bytes:
    """A message as the queue holds it, sent `seconds_ago`."""
    return json.dumps({"headers": {"task": "elsewhere", SENT_AT_HEADER: time.time() - seconds_ago}}).encode()


def test_every_message_says_when_it_was_sent(devstack, settings) -> None:
    broker = redis.Redis.from_url(settings.REDIS_URL)
    flush_redis()  # no worker runs
    try:
        assert oldest_waiting_seconds(broker, QUEUE) is None
        advance_transfer.apply_async(args=[str(uuid.uuid4())])
        waited = oldest_waiting_seconds(broker, QUEUE)
        assert waited is not None
        assert 0 <= waited < 5
        broker.lpush(QUEUE, sent(30))  # the newest end: the oldest is still the real one
        assert oldest_waiting_seconds(broker, QUEUE) < 5  # type: ignore[operator]
        broker.rpush(QUEUE, sent(30))
        assert 29 < oldest_waiting_seconds(broker, QUEUE) < 35  # type: ignore[operator]
    finally:
        flush_redis()


def test_while_the_oldest_message_waits_only_transfers_untouched_since_before_it_are_re_driven(
    devstack, settings
) -> None:
    settings.SAGA_SWEEP_MAX_BACKLOG = 1000  # a short queue: its length alone would hold nothing back
    window = settings.SAGA_STALLED_AFTER_SECONDS
    owner, _ = make_client()
    payer, payee = make_wallet(owner, funded=500, shard="shard_00"), make_wallet(owner, shard="shard_01")
    transfer = create_transfer(owner, payer, payee.id, 200)
    rows = Transfer.objects.using("shard_00").filter(id=transfer.id)
    broker = redis.Redis.from_url(settings.REDIS_URL)
    flush_redis()
    try:
        # Its trigger may be among the queued messages: the oldest was sent after its last touch.
        broker.rpush(QUEUE, sent(window), sent(10 * window))  # the tail, taken next, is the oldest
        touched = timezone.now() - timedelta(seconds=5 * window)
        rows.update(updated_at=touched)
        assert sweep_stalled_transfers() == 0
        assert rows.get().updated_at == touched
        assert broker.llen(QUEUE) == 2

        # Untouched since before the oldest message was sent: any trigger of its own was taken
        # by a worker already, so it was lost.
        touched = timezone.now() - timedelta(seconds=11 * window)
        rows.update(updated_at=touched)
        assert sweep_stalled_transfers() == 1
        assert rows.get().updated_at > touched
        assert broker.llen(QUEUE) == 3

        # The queue worked off (the oldest now waited less than a window): one window again.
        broker.delete(QUEUE)
        broker.rpush(QUEUE, sent(0))
        touched = timezone.now() - timedelta(seconds=2 * window)
        rows.update(updated_at=touched)
        assert sweep_stalled_transfers() == 1
    finally:
        flush_redis()
