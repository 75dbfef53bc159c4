"""Transfers through the HTTP API, executed by real Celery worker processes over real Redis."""

import random
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections

from apps.ledger.models import WalletStatus
from apps.ledger.services import wallet_set_status
from apps.sharding.routing import alias_for_id, shard_aliases
from apps.transfers.checks import check_ledger
from apps.transfers.tasks import advance_transfer
from tests.factories import ALL_DATABASES, api_for, create_transfer, entry_kinds, make_client, make_wallet
from tests.factories import wallet_balance as balance
from tests.workers import Worker, flush_redis, wait_tasks_done, wait_terminal

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


@pytest.fixture(scope="module")
def worker(devstack) -> Iterator[Worker]:
    flush_redis()
    worker = Worker()
    yield worker
    worker.stop()


def post_transfer(api, payer, payee, amount, key=None, wait=None, currency="USD"):
    url = "/v1/transfers" + (f"?wait={wait}" if wait is not None else "")
    body = {"from": str(payer), "to": str(payee), "amount_minor": amount, "currency": currency}
    return api.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY=key or str(uuid.uuid4()))


def test_cross_shard_transfer_completes_via_the_worker(worker) -> None:
    owner, key = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    response = post_transfer(api_for(key), payer.id, payee.id, 400, wait=10)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "completed"
    assert [h["status"] for h in body["status_history"]] == ["pending", "debited", "completed"]
    assert (balance(payer.id), balance(payee.id)) == (600, 400)
    assert check_ledger().violations == []


def test_without_wait_the_api_answers_202_and_the_worker_finishes(worker) -> None:
    owner, key = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_01")
    payee = make_wallet(owner, shard="shard_00")
    response = post_transfer(api_for(key), payer.id, payee.id, 100)
    assert response.status_code == 202
    assert response.json()["status"] == "debited"
    transfer_id = uuid.UUID(response.json()["id"])
    assert wait_terminal([transfer_id], timeout=20)[transfer_id].status == "completed"
    status = api_for(key).get(f"/v1/transfers/{transfer_id}").json()
    assert status["status"] == "completed"
    assert [h["status"] for h in status["status_history"]] == ["pending", "debited", "completed"]


def test_frozen_payee_on_another_shard_ends_failed_and_refunded(worker) -> None:
    owner, key = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(make_client("someone")[0], shard="shard_01")
    wallet_set_status(wallet_id=payee.id, status=WalletStatus.FROZEN)
    body = post_transfer(api_for(key), payer.id, payee.id, 300, wait=10).json()
    assert (body["status"], body["failure_reason"]) == ("failed", "payee_frozen")
    assert [h["status"] for h in body["status_history"]] == ["pending", "debited", "refunding", "failed"]
    assert (balance(payer.id), balance(payee.id)) == (1000, 0)
    assert check_ledger().violations == []


def test_the_same_task_delivered_twice_has_no_double_effect(worker) -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    transfer = create_transfer(owner, payer, payee.id, 250)
    sent = [advance_transfer.apply_async(args=[str(transfer.id)]).id for _ in range(3)]
    assert wait_terminal([transfer.id])[transfer.id].status == "completed"
    # Late duplicates, after the transfer is terminal; every copy has run when the checks below do.
    sent += [advance_transfer.apply_async(args=[str(transfer.id)]).id for _ in range(2)]
    wait_tasks_done(worker, sent)
    assert entry_kinds(payer.id) == ["deposit", "debit"]
    assert entry_kinds(payee.id) == ["credit"]
    assert (balance(payer.id), balance(payee.id)) == (750, 250)


def test_randomized_concurrent_transfers_all_end_terminal_and_money_is_conserved(worker) -> None:
    owner, key = make_client()
    rng = random.Random(20261123)
    aliases = shard_aliases()
    wallets = [make_wallet(owner, funded=rng.randint(0, 3000), shard=aliases[i % len(aliases)]) for i in range(50)]
    total_before = sum(balance(w.id) for w in wallets)
    pairs = [rng.sample(wallets, 2) for _ in range(300)]
    amounts = [rng.randint(1, 1500) for _ in pairs]

    def send(i: int):
        try:
            payer, payee = pairs[i]
            return post_transfer(api_for(key), payer.id, payee.id, amounts[i])
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(send, range(len(pairs))))
    assert {r.status_code for r in responses} <= {201, 202}
    ids = [uuid.UUID(r.json()["id"]) for r in responses]
    finished = wait_terminal(ids, timeout=120)
    outcomes = {t.status for t in finished.values()}
    assert outcomes <= {"completed", "failed"}
    assert "completed" in outcomes
    reasons = {t.failure_reason for t in finished.values() if t.status == "failed"}
    assert reasons <= {"insufficient_funds"}
    assert sum(balance(w.id) for w in wallets) == total_before
    assert all(balance(w.id) >= 0 for w in wallets)
    assert check_ledger().violations == []
    cross = sum(alias_for_id(p.id) != alias_for_id(q.id) for p, q in pairs)
    assert 0 < cross < len(pairs), "the mix covers both same-shard and cross-shard transfers"
