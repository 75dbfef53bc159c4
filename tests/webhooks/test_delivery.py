"""Webhooks end to end: real shards, a real webhook worker (its own queue, beat inside) and a real
HTTP receiver. Every event type arrives signed and equal to GET /v1/events/{id}; failures are
retried and every event arrives once after deduplication; a hanging endpoint delays no other;
a worker killed mid-delivery loses nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.events.models import EVENT_TYPES, Event
from apps.holds.services import HoldRequest, hold_capture, hold_create, hold_void, holds_expire_due
from apps.ledger.models import WalletStatus
from apps.ledger.services import wallet_fund, wallet_set_status
from apps.sharding.routing import shard_aliases
from apps.transfers import saga
from apps.transfers.creation import TransferRequest, new_transfer
from apps.webhooks.models import WebhookDelivery
from apps.webhooks.signing import SIGNATURE_HEADER, verify
from tests.factories import ALL_DATABASES, api_for, make_client, make_wallet
from tests.polling import wait_until
from tests.webhooks.receiver import Behaviour, Receiver
from tests.workers import Worker, flush_redis

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)

FAST = {
    "SHARDWALLET_WEBHOOK_DISPATCH_INTERVAL_SECONDS": "0.3",
    "SHARDWALLET_WEBHOOK_SEND_INTERVAL_SECONDS": "0.3",
    "SHARDWALLET_WEBHOOK_TIMEOUT_SECONDS": "1",
    "SHARDWALLET_WEBHOOK_BACKOFF_BASE_SECONDS": "0.3",
    "SHARDWALLET_WEBHOOK_BACKOFF_MAX_SECONDS": "1",
    "SHARDWALLET_WEBHOOK_LEASE_SECONDS": "4",
}


@pytest.fixture
def webhook_worker() -> Iterator[Any]:
    flush_redis()
    started: list[Worker] = []

    def start(**env: str) -> Worker:
        worker = Worker(queues="webhooks", beat=True, env={**FAST, **env})
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def receivers() -> Iterator[Any]:
    opened: list[Receiver] = []

    def open_one(behaviour: Behaviour | None = None) -> Receiver:
        receiver = Receiver(behaviour)
        opened.append(receiver)
        return receiver

    yield open_one
    for receiver in opened:
        receiver.close()


def register(api: Any, url: str, types: list[str] | None = None) -> dict[str, Any]:
    created = api.post("/v1/webhook_endpoints", {"url": url, "event_types": types or ["*"]}, format="json")
    assert created.status_code == 201, created.content
    return created.json()


def client_event_ids(client_id: int) -> set[str]:
    return {str(i) for alias in shard_aliases() for i in Event.objects.using(alias).filter(client_id=client_id)
            .extra(where=["sharding_serves(events_event.id)"]).values_list("id", flat=True)}  # fmt: skip


def transfer(api: Any, payer: Any, payee: Any, amount: int, key: str) -> dict[str, Any]:
    body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": amount, "currency": "USD"}
    answer = api.post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert answer.status_code in (201, 202), answer.content
    return answer.json()


def make_every_event_type(owner: Any, api: Any) -> None:
    a = make_wallet(owner, funded=10_000, shard="shard_00")  # wallet.created, deposit.succeeded
    b = make_wallet(owner, shard="shard_00")
    far = make_wallet(owner, shard="shard_01")
    assert api.post(f"/v1/wallets/{a.id}/withdrawals", {"amount_minor": 1}, format="json",
                    HTTP_IDEMPOTENCY_KEY="w").status_code == 201  # fmt: skip
    transfer(api, a, b, 100, "same")  # transfer.completed, transfer.received
    transfer(api, b, a, 1_000_000, "broke")  # transfer.failed
    debited = transfer(api, a, far, 100, "far")  # transfer.debited
    saga.transfer_advance(uuid.UUID(debited["id"]))
    wallet_set_status(wallet_id=far.id, status=WalletStatus.FROZEN)  # wallet.frozen
    refused = transfer(api, a, far, 100, "refused")
    saga.transfer_advance(uuid.UUID(refused["id"]))  # transfer.refunding, then failed
    wallet_set_status(wallet_id=far.id, status=WalletStatus.ACTIVE)  # wallet.unfrozen
    pending = new_transfer(
        TransferRequest(
            client_id=owner.id, payer_id=a.id, payee_id=b.id, amount_minor=5, currency="USD", idempotency_key="stored"
        )
    )
    saga.insert_transfer(pending, [saga.Event(None, "pending", None, pending.created_at)])  # transfer.created
    saga.transfer_advance(pending.id)

    def hold(amount: int, key: str, expires_in: float = 3600) -> Any:
        return hold_create(
            HoldRequest(
                client_id=owner.id,
                payer_id=a.id,
                payee_id=b.id,
                amount_minor=amount,
                currency="USD",
                expires_at=timezone.now() + timedelta(seconds=expires_in),
                idempotency_key=key,
            )
        ).hold

    hold_capture(hold(10, "h1").id, client_id=owner.id, amount_minor=None)  # hold.created, hold.captured
    hold_void(hold(10, "h2").id, client_id=owner.id, note="")  # hold.voided
    hold(10**9, "h3")  # hold.failed
    hold(10, "h4", expires_in=0.5)
    time.sleep(0.6)
    assert holds_expire_due("shard_00") == 1  # hold.expired


def test_every_event_type_is_delivered_signed_and_as_the_api_shows_it(webhook_worker, receivers) -> None:
    owner, key = make_client()
    api = api_for(key)
    receiver = receivers()
    endpoint = register(api, receiver.url)
    make_every_event_type(owner, api)
    expected = client_event_ids(owner.id)
    webhook_worker()
    wait_until(lambda: set(receiver.accepted_ids()) >= expected, timeout=60, what="every event delivered")

    types = set()
    for request in receiver.received:
        event = request.event
        assert verify(endpoint["secret"], request.body, request.headers[SIGNATURE_HEADER])
        assert not verify("whsec_wrong", request.body, request.headers[SIGNATURE_HEADER])
        assert request.headers["Shardwallet-Event-Id"] == event["id"]
        assert api.get(f"/v1/events/{event['id']}").json() == event
        types.add(event["type"])
    assert types == set(EVENT_TYPES)
    assert sorted(receiver.accepted_ids()) == sorted(expected)  # once each: nothing failed, nothing repeated


def test_a_receiver_that_fails_then_recovers_gets_every_event_once_by_id(webhook_worker, receivers) -> None:
    owner, key = make_client()
    api = api_for(key)
    receiver = receivers(Behaviour(fail_first=4))
    endpoint = register(api, receiver.url, ["deposit.succeeded"])
    wallet = make_wallet(owner, shard="shard_01")
    for n in range(6):
        wallet_fund(wallet_id=wallet.id, amount_minor=10, reference=f"dep-{n}")
    expected = {str(e.id) for e in Event.objects.using("shard_01").filter(client_id=owner.id, type="deposit.succeeded")}
    webhook_worker()
    wait_until(lambda: set(receiver.accepted_ids()) == expected, timeout=60, what="every deposit delivered")
    assert len(receiver.received) > len(expected)  # the failures were retried ...
    assert len(set(receiver.accepted_ids())) == len(expected)  # ... and each event accepted once by id

    # The sender records successes in batches after it sends them: the receiver may have
    # answered the last one a moment before its delivery says so.
    def deliveries() -> list[dict[str, Any]]:
        return api.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries").json()["data"]

    wait_until(lambda: {d["status"] for d in deliveries()} == {"succeeded"}, timeout=30, what="successes recorded")
    page = deliveries()
    retried = [d for d in page if d["attempts"] > 1]
    assert retried
    assert retried[0]["attempt_log"][0]["status_code"] == 500
    assert api.get(f"/v1/webhook_endpoints/{endpoint['id']}").json()["consecutive_failures"] == 0


def test_a_hanging_endpoint_delays_neither_another_endpoint_nor_the_transfers(webhook_worker, receivers) -> None:
    owner, key = make_client()
    api = api_for(key)
    hanging = receivers(Behaviour(hang_seconds=30))
    healthy = receivers()
    stuck = register(api, hanging.url)
    register(api, healthy.url)
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_00")
    webhook_worker()
    wait_until(lambda: len(hanging.received) >= 1, timeout=60, what="the hanging endpoint to be called")
    started = time.monotonic()
    for n in range(5):
        assert transfer(api, payer, payee, 10, f"t-{n}")["status"] == "completed"
    expected = client_event_ids(owner.id)
    wait_until(lambda: set(healthy.accepted_ids()) >= expected, timeout=25, what="the healthy endpoint's events")
    assert time.monotonic() - started < 25  # all while the other endpoint still hangs (30 s)
    # The hanging endpoint got requests but never answered in time: nothing of it succeeded.
    assert not WebhookDelivery.objects.filter(endpoint_id=stuck["id"], status="succeeded").exists()


def test_a_worker_killed_during_a_delivery_loses_no_event(webhook_worker, receivers) -> None:
    owner, key = make_client()
    api = api_for(key)
    receiver = receivers(Behaviour(hang_seconds=20))
    register(api, receiver.url, ["deposit.succeeded"])
    wallet = make_wallet(owner, shard="shard_00")
    wallet_fund(wallet_id=wallet.id, amount_minor=10, reference="dep-1")
    [event_id] = [
        str(e.id) for e in Event.objects.using("shard_00").filter(client_id=owner.id, type="deposit.succeeded")
    ]
    first = webhook_worker()
    wait_until(lambda: len(receiver.received) == 1, timeout=60, what="the delivery in flight")
    first.kill()  # SIGKILL mid-request: no attempt recorded, the claim's lease runs
    assert WebhookDelivery.objects.get(event_id=event_id).attempts == 0
    receiver.behaviour.hang_seconds = 0
    webhook_worker()
    wait_until(
        lambda: WebhookDelivery.objects.get(event_id=event_id).status == "succeeded",
        timeout=60,
        what="the delivery sent again",
    )
    assert WebhookDelivery.objects.get(event_id=event_id).attempts == 1
    # Sent twice (at least once), one event by its id.
    assert [r.event["id"] for r in receiver.received] == [event_id, event_id]
