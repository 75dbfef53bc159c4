"""Holes a review found in the transfer rules, each closed: a balance oracle, a refund that could not
fit, abandoned keys in batches, key purging, a drain stopped by one transfer, sweeper floods, and
repeats inside one batch."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.ledger.errors import BalanceLimitExceeded
from apps.ledger.models import WalletStatus
from apps.ledger.services import MAX_BALANCE_MINOR, wallet_fund, wallet_set_status
from apps.transfers import saga, tasks
from apps.transfers.api.views import render_transfer
from apps.transfers.checks import check_ledger
from apps.transfers.creation import transfer_create
from apps.transfers.idempotency import idempotency_records_purge
from apps.transfers.models import IdempotencyRecord, Transfer, TransferStatus
from tests.factories import (
    ALL_DATABASES,
    api_for,
    create_transfer,
    entry_kinds,
    make_client,
    make_wallet,
    raw_query,
    transfer_request,
    wallet_balance,
)

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def transfer_body(payer, payee, amount: int) -> dict[str, Any]:
    return {"from": str(payer.id), "to": str(payee.id), "amount_minor": amount, "currency": "USD"}


def set_balance(wallet_id: uuid.UUID, balance: int) -> None:
    """Give a wallet a balance near the limit through a deposit (the service refuses past the limit)."""
    wallet_fund(wallet_id=wallet_id, amount_minor=balance - wallet_balance(wallet_id), reference=f"top-{uuid.uuid4()}")


# 1. No balance oracle: a payment the payer cannot make says nothing about the payee.


@pytest.fixture
def prober_and_victim():
    prober, prober_key = make_client("prober")
    victim_owner, _ = make_client("victim")
    poor = make_wallet(prober, funded=10, shard="shard_00")
    victim = make_wallet(victim_owner, shard="shard_00")
    set_balance(victim.id, MAX_BALANCE_MINOR - 50)
    return api_for(prober_key), poor, victim


def test_a_payment_the_payer_cannot_make_reveals_nothing_about_a_foreign_payee(prober_and_victim) -> None:
    api, poor, victim = prober_and_victim
    # 100 would pass the victim's limit (balance 2^63-51) and is more than the payer holds.
    response = api.post("/v1/transfers", transfer_body(poor, victim, 100), format="json", HTTP_IDEMPOTENCY_KEY="p1")
    assert response.status_code == 201
    assert response.json()["failure_reason"] == "insufficient_funds"
    wallet_set_status(wallet_id=victim.id, status=WalletStatus.FROZEN)
    frozen = api.post("/v1/transfers", transfer_body(poor, victim, 20), format="json", HTTP_IDEMPOTENCY_KEY="p2")
    assert frozen.json()["failure_reason"] == "insufficient_funds"
    assert wallet_balance(poor.id) == 10


def test_a_batch_payment_the_payer_cannot_make_reveals_nothing_about_a_foreign_payee(prober_and_victim) -> None:
    api, poor, victim = prober_and_victim
    items = [{"idempotency_key": "b1", **transfer_body(poor, victim, 100)}]
    response = api.post("/v1/transfers/batch", {"transfers": items}, format="json")
    [result] = response.json()["results"]
    assert result["transfer"]["failure_reason"] == "insufficient_funds"


def test_a_payment_the_payer_can_make_is_refused_by_the_payees_limit(prober_and_victim) -> None:
    api, poor, victim = prober_and_victim
    wallet_fund(wallet_id=poor.id, amount_minor=990, reference="more")
    response = api.post("/v1/transfers", transfer_body(poor, victim, 100), format="json", HTTP_IDEMPOTENCY_KEY="p3")
    assert response.json()["failure_reason"] == "payee_balance_limit"
    assert wallet_balance(poor.id) == 1000
    assert wallet_balance(victim.id) == MAX_BALANCE_MINOR - 50


# 2. Every accepted transfer can be finished: credits keep room for the money a wallet has in flight.


def test_money_in_flight_keeps_room_so_that_its_refund_always_fits() -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    frozen_payee = make_wallet(owner, shard="shard_01")
    wallet_set_status(wallet_id=frozen_payee.id, status=WalletStatus.FROZEN)
    in_flight = create_transfer(owner, payer, frozen_payee.id, 1000)  # debited; will be refused and refunded
    assert in_flight.status == TransferStatus.DEBITED
    # The payer's balance is 0 with 1000 in flight: it may receive up to 2^63-1 - 1000.
    with pytest.raises(BalanceLimitExceeded):
        wallet_fund(wallet_id=payer.id, amount_minor=MAX_BALANCE_MINOR - 999, reference="too-much")
    wallet_fund(wallet_id=payer.id, amount_minor=MAX_BALANCE_MINOR - 1000 - 5, reference="almost")
    # A same-shard transfer and a cross-shard credit into it are held to the same room.
    same_shard_sender = make_wallet(owner, funded=10, shard="shard_00")
    refused = create_transfer(owner, same_shard_sender, payer.id, 10)
    assert (refused.status, refused.failure_reason) == ("failed", "payee_balance_limit")
    other_shard_sender = make_wallet(owner, funded=10, shard="shard_01")
    cross = create_transfer(owner, other_shard_sender, payer.id, 10)
    assert saga.transfer_advance(cross.id).failure_reason == "payee_balance_limit"
    # The refund of the transfer in flight fits.
    finished = saga.transfer_advance(in_flight.id)
    assert (finished.status, finished.failure_reason) == ("failed", "payee_frozen")
    assert wallet_balance(payer.id) == MAX_BALANCE_MINOR - 5
    assert entry_kinds(payer.id)[-1] == "refund"
    assert check_ledger().violations == []


# 3. One rule for keys whose first request died, and no purge of a key whose transfer is in flight.


def abandon(key: str) -> None:
    """Age a key's record past the point where its waiting request is taken for dead."""
    for alias in ("shard_00", "shard_01"):
        raw_query(alias, "UPDATE transfers_idempotency SET created_at = now() - interval '5 minutes' WHERE key = %s",
                  [key])  # fmt: skip


def test_an_abandoned_key_is_replayed_with_its_transfer_by_both_endpoints() -> None:
    owner, api_key = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_00")
    request = transfer_request(owner, payer, payee.id, 100, key="dead")
    first = transfer_create(request, render=render_transfer, defer_response=True)  # its response is never stored
    api = api_for(api_key)
    item = {"idempotency_key": "dead", **transfer_body(payer, payee, 100)}
    in_progress = api.post("/v1/transfers/batch", {"transfers": [item]}, format="json").json()["results"][0]
    assert (in_progress["status"], in_progress["error"]["code"]) == (409, "idempotency_request_in_progress")
    abandon("dead")
    [batch] = api.post("/v1/transfers/batch", {"transfers": [item]}, format="json").json()["results"]
    assert batch["outcome"] == "replayed"
    assert batch["transfer"]["id"] == str(first.transfer.id)
    single = api.post("/v1/transfers", transfer_body(payer, payee, 100), format="json", HTTP_IDEMPOTENCY_KEY="dead")
    assert single.status_code == 201
    assert single["Idempotent-Replayed"] == "true"
    assert single.json() == batch["transfer"]
    assert wallet_balance(payer.id) == 900, "paid once"


def test_purge_keeps_the_key_of_a_transfer_still_in_flight() -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    in_flight = create_transfer(owner, payer, make_wallet(owner, shard="shard_01").id, 10)
    done = create_transfer(owner, payer, make_wallet(owner, shard="shard_00").id, 10)
    IdempotencyRecord.objects.using("shard_00").update(created_at=timezone.now() - timedelta(hours=25))
    assert idempotency_records_purge() == 1
    remaining = set(IdempotencyRecord.objects.using("shard_00").values_list("transfer_id", flat=True))
    assert remaining == {in_flight.id}
    assert done.status == TransferStatus.COMPLETED


# 4. One failing transfer does not stop its shard's drain.


def test_a_transfer_that_fails_in_a_drain_does_not_stop_the_others(monkeypatch) -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    frozen = make_wallet(owner, shard="shard_01")
    wallet_set_status(wallet_id=frozen.id, status=WalletStatus.FROZEN)
    poison, healthy = (create_transfer(owner, payer, frozen.id, 100) for _ in range(2))
    real_advance = saga.transfer_advance

    def advance(transfer_id: uuid.UUID) -> Transfer:
        if transfer_id == poison.id:
            raise RuntimeError("a bug in one transfer's step")
        return real_advance(transfer_id)

    monkeypatch.setattr(saga, "transfer_advance", advance)
    tasks.drain_transfers.apply(args=["shard_00"]).get()
    rows = {t.id: t for t in Transfer.objects.using("shard_00").filter(id__in=[poison.id, healthy.id])}
    assert (rows[healthy.id].status, rows[healthy.id].failure_reason) == ("failed", "payee_frozen")
    assert rows[poison.id].status == "debited"
    assert "a bug in one transfer's step" in rows[poison.id].last_error
    assert rows[poison.id].attempts > 0, "left to its own task: later drains skip it"
    assert wallet_balance(payer.id) == 900


# 5. Parking goes by the attempts stored in the row, not by the message's retry count.


def test_a_transfer_is_parked_by_its_stored_attempts_whatever_the_message_says(settings) -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    transfer = create_transfer(owner, payer, make_wallet(owner, shard="shard_01").id, 100)
    # As if earlier deliveries had each killed their worker: counted in the row, retries=0 in the message.
    raw_query("shard_00", "UPDATE transfers_transfer SET attempts = %s WHERE id = %s",
              [settings.SAGA_MAX_RETRIES + 1, transfer.id])  # fmt: skip
    assert tasks.advance_transfer.apply(args=[str(transfer.id)]).get() is None
    row = Transfer.objects.using("shard_00").get(id=transfer.id)
    assert row.parked_at is not None
    assert row.status == "debited", "not run: an operator decides"


def test_each_run_of_a_transfers_task_is_counted_before_it_runs() -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    transfer = create_transfer(owner, payer, make_wallet(owner, shard="shard_01").id, 100)
    assert tasks.advance_transfer.apply(args=[str(transfer.id)]).get() == "completed"
    assert Transfer.objects.using("shard_00").get(id=transfer.id).attempts == 1


# 7. A key repeated inside one batch is answered as successive single requests would be.


def test_a_repeat_in_a_batch_after_a_refused_first_is_a_request_of_its_own() -> None:
    owner, api_key = make_client()
    stranger, _ = make_client("stranger")
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    foreign = make_wallet(stranger, funded=1000, shard="shard_00")
    items = [
        {"idempotency_key": "k", **transfer_body(foreign, payee, 100)},  # not our wallet: 404, nothing recorded
        {"idempotency_key": "k", **transfer_body(payer, payee, 100)},  # another payer: its own scope
        {"idempotency_key": "k", **transfer_body(payer, payee, 100)},  # the same again: replay
        {"idempotency_key": "k", **transfer_body(payer, payee, 200)},  # another body: reused
    ]
    results = api_for(api_key).post("/v1/transfers/batch", {"transfers": items}, format="json").json()["results"]
    assert [(r["outcome"], r["status"]) for r in results] == [
        ("rejected", 404), ("accepted", 202), ("replayed", 202), ("rejected", 422),
    ]  # fmt: skip
    assert results[2]["transfer"] == results[1]["transfer"]
    assert results[3]["error"]["code"] == "idempotency_key_reused"
    assert wallet_balance(payer.id) == 900
    assert wallet_balance(foreign.id) == 1000


def test_a_repeat_in_a_batch_of_a_key_refused_for_its_body_is_decided_on_its_own_body() -> None:
    owner, api_key = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    eur = make_wallet(owner, currency="EUR", funded=1000, shard="shard_00")
    eur_payee = make_wallet(owner, currency="EUR", shard="shard_00")
    items = [
        {"idempotency_key": "k", **transfer_body(eur, eur_payee, 100)},  # USD from an EUR wallet: 422, not recorded
        {"idempotency_key": "k", **transfer_body(eur, eur_payee, 100), "currency": "EUR"},  # valid: accepted
    ]
    results = api_for(api_key).post("/v1/transfers/batch", {"transfers": items}, format="json").json()["results"]
    assert (results[0]["status"], results[0]["error"]["code"]) == (422, "currency_mismatch")
    assert (results[1]["outcome"], results[1]["transfer"]["status"]) == ("accepted", "completed")
    assert (wallet_balance(eur.id), wallet_balance(eur_payee.id)) == (900, 100)
    assert wallet_balance(payer.id) == 1000
