"""Events whose bucket moves while they are written and pending delivery: each is delivered once,
from whichever shard serves it."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter

import pytest

from apps.webhooks.models import WebhookDelivery
from tests.factories import ALL_DATABASES, api_for, make_client
from tests.polling import wait_until
from tests.sharding.moving import move_under_traffic, range_rows, wallet_in_bucket
from tests.webhooks.receiver import Receiver
from tests.webhooks.test_delivery import FAST, client_event_ids
from tests.workers import Worker, flush_redis

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=ALL_DATABASES),
    pytest.mark.slow,
    pytest.mark.usefixtures("file_layout_afterwards"),
]


def test_events_written_and_pending_while_their_range_moves_are_delivered_once() -> None:
    owner, key = make_client()
    receiver = Receiver()
    api = api_for(key)
    assert api.post("/v1/webhook_endpoints", {"url": receiver.url, "event_types": ["*"]},
                    format="json").status_code == 201  # fmt: skip
    inside = [wallet_in_bucket(owner, b, funded=10_000) for b in (0, 17, 40, 63)]
    outside = wallet_in_bucket(owner, 200, funded=10_000)
    flush_redis()
    worker = Worker(queues="webhooks", beat=True, env=FAST)  # pending events above, more below, during the move
    try:

        def traffic(stop: threading.Event, seed: int) -> None:
            rng = random.Random(seed)
            client = api_for(key)
            while not stop.is_set():
                wallet = rng.choice(inside)
                if rng.random() < 0.5:
                    client.post(f"/v1/wallets/{wallet.id}/deposits", {"amount_minor": rng.randint(1, 9)},
                                format="json", HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))  # fmt: skip
                else:
                    body = {"from": str(wallet.id), "to": str(rng.choice([*inside, outside]).id), "amount_minor": 1,
                            "currency": "USD"}  # fmt: skip
                    if body["from"] != body["to"]:
                        client.post("/v1/transfers?wait=2", body, format="json",
                                    HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))  # fmt: skip
                time.sleep(0.02)

        done = move_under_traffic(traffic, 0, 63, "shard_01", clients=2)
        assert done.state == "done"
        assert range_rows("shard_00", 0, 63)["events_event"] == 0
        assert range_rows("shard_01", 0, 63)["events_event"] > 0
        expected = client_event_ids(owner.id)
        wait_until(lambda: set(receiver.accepted_ids()) >= expected, timeout=90, what="every event delivered")
        delivered = Counter(receiver.accepted_ids())
        assert set(delivered) == expected
        assert [i for i, n in delivered.items() if n > 1] == []  # once each
        assert WebhookDelivery.objects.filter(endpoint__client=owner).count() == len(expected)
    finally:
        worker.kill()
        receiver.close()
