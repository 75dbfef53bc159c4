"""Refunds on real shards: whole, part, across shards, refused, rejected, concurrent, resumed; within the amount."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connections, transaction

from apps.common.errors import DomainError, IdempotencyKeyReused
from apps.ledger.models import WalletStatus
from apps.ledger.services import WalletChanges, wallet_set_status, wallet_update, wallet_withdraw
from apps.refunds.errors import RefundExceedsRemaining, RefundNotAllowed, TransferFullyRefunded, TransferNotRefundable
from apps.refunds.models import Refund
from apps.refunds.services import RefundRequest, _lock_pair, _reserve, refund_create, refunds_resume_stalled
from apps.sharding.routing import alias_for_id
from apps.transfers.api.views import render_transfer
from apps.transfers.checks import check_ledger
from apps.transfers.errors import TransferNotFound
from apps.transfers.models import Transfer
from apps.transfers.saga import transfer_advance
from tests.factories import ALL_DATABASES, create_transfer, entry_kinds, make_client, make_wallet, wallet_balance

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


@pytest.fixture
def owner():
    return make_client()[0]


def paid(owner, payer, payee, amount: int) -> Transfer:
    """A completed transfer (advanced here: no worker runs in these tests)."""
    transfer = transfer_advance(create_transfer(owner, payer, payee.id, amount).id)
    assert transfer.status == "completed"
    return transfer


def refund(client, original: Transfer, amount: int | None = None, key: str | None = None):
    request = RefundRequest(client.id, original.id, amount, key or str(uuid.uuid4()))
    return refund_create(request, render=render_transfer)


def stored(original: Transfer) -> Transfer:
    return Transfer.objects.using(alias_for_id(original.id)).get(id=original.id)


def record(answer) -> Refund:
    return Refund.objects.using(alias_for_id(answer.refund.id)).get(id=answer.refund.id)


def refund_transfer(answer) -> Transfer:
    transfer_id = answer.refund.transfer_id
    return Transfer.objects.using(alias_for_id(transfer_id)).get(id=transfer_id)


def ledger_ok() -> None:
    report = check_ledger()
    assert report.violations == []


def test_a_full_refund_across_shards_runs_through_the_saga_and_pays_the_payer_back(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    original = paid(owner, payer, payee, 300)
    answer = refund(owner, original)
    assert (answer.status, answer.replayed) == (202, False)  # debited from the payee; the saga credits the payer
    moved = refund_transfer(answer)
    assert (moved.payer_id, moved.payee_id, moved.amount_minor, moved.refund_of) == (
        payee.id,
        payer.id,
        300,
        original.id,
    )
    assert record(answer).status == "pending"
    assert stored(original).amount_refunded == 300
    assert transfer_advance(moved.id).status == "completed"
    assert record(answer).status == "succeeded"  # settled with the payer's credit
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (1000, 0)
    assert entry_kinds(payer.id) == ["deposit", "debit", "credit"]
    with pytest.raises(TransferFullyRefunded):
        refund(owner, original)
    report = check_ledger()
    assert report.violations == []
    assert report.refunds == 1


def test_partial_refunds_add_up_to_the_amount_and_no_further(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_00")
    original = paid(owner, payer, payee, 300)
    first = refund(owner, original, 100)
    assert first.status == 201  # one shard: completed in its first step
    assert (refund_transfer(first).status, record(first).status) == ("completed", "succeeded")
    with pytest.raises(RefundExceedsRemaining):
        refund(owner, original, 201)
    rest = refund(owner, original)  # the default: what remains
    assert refund_transfer(rest).amount_minor == 200
    assert stored(original).amount_refunded == 300
    with pytest.raises(TransferFullyRefunded):
        refund(owner, original, 1)
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (1000, 0)
    ledger_ok()


@pytest.mark.parametrize("payee_shard", ["shard_00", "shard_01"])
def test_a_payee_without_the_funds_fails_the_refund_and_nothing_moves(owner, payee_shard: str) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard=payee_shard)
    original = paid(owner, payer, payee, 300)
    wallet_withdraw(wallet_id=payee.id, amount_minor=250, reference="spent")
    answer = refund(owner, original, 100)
    assert answer.status == 201
    moved = refund_transfer(answer)
    assert (moved.status, moved.failure_reason) == ("failed", "insufficient_funds")
    assert (record(answer).status, record(answer).failure_reason) == ("failed", "insufficient_funds")
    assert stored(original).amount_refunded == 0  # the reservation is given back
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (700, 50)
    wallet_set_status(wallet_id=payee.id, status=WalletStatus.FROZEN)
    assert refund_transfer(refund(owner, original, 10)).failure_reason == "payer_frozen"
    assert stored(original).amount_refunded == 0
    ledger_ok()


def test_a_refund_to_a_payer_frozen_meanwhile_is_rejected_given_back_to_the_payee_and_released(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    original = paid(owner, payer, payee, 300)
    answer = refund(owner, original, 120)
    wallet_set_status(wallet_id=payer.id, status=WalletStatus.FROZEN)
    moved = transfer_advance(answer.refund.transfer_id)
    assert (moved.status, moved.failure_reason) == ("failed", "payee_frozen")
    assert (record(answer).status, record(answer).failure_reason) == ("failed", "payee_frozen")
    assert stored(original).amount_refunded == 0
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (700, 300)
    ledger_ok()


def test_a_repeated_key_replays_the_first_answer_and_another_amount_is_refused(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    original = paid(owner, payer, payee, 300)
    first = refund(owner, original, 100, key="r1")
    again = refund(owner, original, 100, key="r1")
    assert again.replayed
    assert (again.status, again.body) == (first.status, first.body)
    with pytest.raises(IdempotencyKeyReused):
        refund(owner, original, 101, key="r1")
    assert stored(original).amount_refunded == 100
    assert Refund.objects.using(alias_for_id(original.id)).filter(original_id=original.id).count() == 1


def test_concurrent_refunds_never_add_up_to_more_than_the_amount(owner) -> None:
    payer = make_wallet(owner, funded=10_000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    original = paid(owner, payer, payee, 1000)
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def one() -> None:
        try:
            start.wait()
            refund(owner, original, 300)
            outcomes.append("refunded")
        except DomainError as exc:
            outcomes.append(exc.code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refund_exceeds_remaining"] * 5 + ["refunded"] * 3
    assert stored(original).amount_refunded == 900
    for refund_id in Refund.objects.using("shard_00").filter(original_id=original.id).values_list("transfer_id"):
        assert transfer_advance(refund_id[0]).status == "completed"
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (9900, 100)
    ledger_ok()


def test_who_may_refund_the_payees_owner_and_the_payers_client_only_where_the_payee_allows(owner) -> None:
    merchant, _ = make_client("merchant")
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(merchant, shard="shard_01")
    original = paid(owner, payer, payee, 300)
    stranger, _ = make_client("stranger")
    with pytest.raises(TransferNotFound):
        refund(stranger, original, 10)
    with pytest.raises(RefundNotAllowed):  # the payer cannot pull money back on its own say
        refund(owner, original, 10)
    assert stored(original).amount_refunded == 0
    by_merchant = refund(merchant, original, 10)
    assert refund_transfer(by_merchant).client_id == merchant.id
    wallet_update(wallet_id=payee.id, owner_id=merchant.id, changes=WalletChanges(payer_may_refund=True))
    by_payer = refund(owner, original, 20)
    assert refund_transfer(by_payer).client_id == owner.id
    assert stored(original).amount_refunded == 30


def test_only_a_completed_transfer_that_is_not_a_refund_can_be_refunded(owner) -> None:
    payer = make_wallet(owner, funded=100, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    failed = create_transfer(owner, payer, payee.id, 500)
    assert failed.status == "failed"
    with pytest.raises(TransferNotRefundable):
        refund(owner, failed)
    in_flight = create_transfer(owner, payer, payee.id, 50)
    assert in_flight.status == "debited"
    with pytest.raises(TransferNotRefundable):
        refund(owner, in_flight)
    original = transfer_advance(in_flight.id)
    moved = transfer_advance(refund(owner, original, 10).refund.transfer_id)
    with pytest.raises(TransferNotRefundable):
        refund(owner, moved)


def test_a_refund_whose_request_died_after_the_reservation_is_finished_by_the_resumption_job(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    original = paid(owner, payer, payee, 300)
    request = RefundRequest(owner.id, original.id, 100, "died")
    reserved = _reserve("shard_00", original, request)  # step 1 committed, then the request died
    assert not Transfer.objects.using("shard_01").filter(id=reserved.transfer_id).exists()
    assert refunds_resume_stalled("shard_00", older_than=timedelta(hours=1)) == 0  # too young to resume
    assert refunds_resume_stalled("shard_00", older_than=timedelta(0)) == 0  # resumed: running, not settled
    assert transfer_advance(reserved.transfer_id).status == "completed"
    again = refund(owner, original, 100, key="died")  # the key's first answer: the refund as it now is
    assert (again.status, again.replayed) == (201, False)
    assert refund(owner, original, 100, key="died").replayed  # and then that answer, replayed
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (800, 200)
    ledger_ok()


def test_a_refused_refund_left_unsettled_by_a_dead_request_is_released_by_the_resumption_job(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    original = paid(owner, payer, payee, 300)
    wallet_withdraw(wallet_id=payee.id, amount_minor=300, reference="spent")
    reserved = _reserve("shard_00", original, RefundRequest(owner.id, original.id, 100, "died"))
    from apps.refunds.services import _first_step

    with transaction.atomic(using="shard_01"):  # step 2 committed (refused), then the request died
        moved = _first_step("shard_01", reserved, original, _lock_pair("shard_01", original))
    assert moved.failure_reason == "insufficient_funds"
    assert stored(original).amount_refunded == 100  # still reserved: nothing settled it yet
    assert refunds_resume_stalled("shard_00", older_than=timedelta(0)) == 1
    assert Refund.objects.using("shard_00").get(id=reserved.id).status == "failed"
    assert stored(original).amount_refunded == 0
    ledger_ok()


def test_the_admin_shows_a_transfers_refunds_and_a_refund_links_its_original(owner) -> None:
    from tests.operators.helpers import logged_in, make_staff

    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    original = paid(owner, payer, payee, 300)
    done = refund(owner, original, 120)
    transfer_advance(done.refund.transfer_id)
    wallet_withdraw(wallet_id=payee.id, amount_minor=180, reference="spent")
    refused = refund(owner, original, 50)
    viewer = logged_in(make_staff("vic", "viewers"))
    page = viewer.get(f"/admin/transfers/transfer/{original.id}/change/").content.decode()
    assert str(done.refund.transfer_id) in page
    assert "succeeded" in page
    assert str(refused.refund.transfer_id) in page
    assert "insufficient_funds" in page
    assert "1.20" in page  # amount refunded: the succeeded refund only
    linked = viewer.get(f"/admin/transfers/transfer/{done.refund.transfer_id}/change/").content.decode()
    assert f"/admin/transfers/transfer/{original.id}/change/" in linked
