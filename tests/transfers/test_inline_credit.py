"""Shorter hand-offs for cross-shard transfers: the credit run in the request
(SHARDWALLET_TRANSFER_CREDIT_INLINE: no hand-off to a drain when both shards answer, the saga
as before when one does not, the idempotency record's answer is the one sent), and drains run
in the API process (SHARDWALLET_TRANSFER_DRAIN_IN_API: no Celery message, no worker)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connections

from apps.transfers.checks import check_ledger
from tests.factories import ALL_DATABASES, api_for, entry_kinds, make_client, make_wallet
from tests.factories import wallet_balance as balance
from tests.workers import Worker, flush_redis, wait_terminal

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def post(key: str, payer: Any, payee: Any, amount: int, idempotency_key: str) -> Any:
    body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": amount, "currency": "USD"}
    return api_for(key).post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY=idempotency_key)


def queued_messages() -> int:
    """Celery messages waiting in Redis (the default queue)."""
    return int(redis.Redis.from_url(django_settings.REDIS_URL).llen("celery"))


def cross_shard(funded: int = 1_000) -> tuple[str, Any, Any, str]:
    """A client's key, a funded payer on shard_00, a payee on shard_01 and a fresh idempotency key."""
    owner, key = make_client()
    payer = make_wallet(owner, funded=funded, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    return key, payer, payee, str(uuid.uuid4())


@pytest.fixture
def inline(settings: Any) -> None:
    settings.TRANSFER_CREDIT_INLINE = True
    flush_redis()


@pytest.mark.usefixtures("inline")
def test_a_cross_shard_transfer_completes_in_its_request_and_a_replay_is_the_same_answer() -> None:
    key, payer, payee, idempotency_key = cross_shard()

    first = post(key, payer, payee, 300, idempotency_key)
    assert first.status_code == 201, first.content
    assert first.json()["status"] == "completed"
    assert (balance(payer.id), balance(payee.id)) == (700, 300)
    assert entry_kinds(payee.id) == ["credit"]
    assert queued_messages() == 0  # no drain was asked for: nothing was left to the saga

    replay = post(key, payer, payee, 300, idempotency_key)
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert (balance(payer.id), balance(payee.id)) == (700, 300)
    assert check_ledger().violations == []


@pytest.mark.slow
@pytest.mark.usefixtures("inline")
def test_with_the_payee_shard_down_it_answers_in_flight_and_the_saga_finishes_it(
    workers: Any, payee_shard: Any
) -> None:
    key, payer, payee, idempotency_key = cross_shard()
    payee_shard.stop()

    first = post(key, payer, payee, 250, idempotency_key)
    assert first.status_code == 202, first.content
    assert first.json()["status"] == "debited"
    assert queued_messages() == 1  # the drain it asked for instead

    payee_shard.start()
    connections["shard_01"].close()
    workers.append(Worker())
    transfer_id = uuid.UUID(first.json()["id"])
    assert wait_terminal([transfer_id], timeout=60)[transfer_id].status == "completed"
    assert (balance(payer.id), balance(payee.id)) == (750, 250)
    replay = post(key, payer, payee, 250, idempotency_key)
    assert (replay.status_code, replay.content) == (202, first.content)  # the answer sent is the one kept
    assert check_ledger().violations == []


def test_with_drains_in_the_api_a_cross_shard_transfer_completes_without_a_worker_or_a_message(
    settings: Any,
) -> None:
    """SHARDWALLET_DRAIN_IN_API: the request answers as before (202, stored at its first step)
    and a thread of this process drains the payer's shard at once."""
    settings.TRANSFER_DRAIN_IN_API = True
    flush_redis()
    key, payer, payee, idempotency_key = cross_shard()

    first = post(key, payer, payee, 400, idempotency_key)
    assert first.status_code == 202, first.content
    transfer_id = uuid.UUID(first.json()["id"])
    assert wait_terminal([transfer_id], timeout=15)[transfer_id].status == "completed"
    assert (balance(payer.id), balance(payee.id)) == (600, 400)
    assert queued_messages() == 0
    replay = post(key, payer, payee, 400, idempotency_key)
    assert (replay.status_code, replay.content) == (202, first.content)
    assert check_ledger().violations == []
