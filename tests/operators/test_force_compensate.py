"""transfer_force_compensate: the operator's way out for a transfer that cannot complete.

It follows the saga's protocol: a refund only after a committed `rejected` PayeeCredit on
the payee's shard, so a payee credit and a payer refund never both happen.
"""

from __future__ import annotations

import uuid

import pytest
from django.db import connections
from django.utils import timezone

from apps.ledger.models import WalletStatus
from apps.ledger.services import wallet_set_status
from apps.sharding.ids import bucket_of, new_id
from apps.transfers import saga
from apps.transfers.checks import check_ledger
from apps.transfers.errors import ShardUnavailable, TransferNotInFlight
from apps.transfers.models import PayeeCredit, Transfer
from apps.transfers.selectors import transfer_events
from apps.transfers.services import transfer_force_compensate
from tests.factories import ALL_DATABASES, entry_kinds, make_client, raw_query
from tests.factories import wallet_balance as balance
from tests.ledger.test_concurrency import run_concurrently
from tests.operators.helpers import cross_shard_pair, parked_transfer

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def row(transfer_id: uuid.UUID) -> Transfer:
    return Transfer.objects.using("shard_00").get(id=transfer_id)


def statuses(transfer_id: uuid.UUID) -> list[str]:
    return [e.to_status for e in transfer_events(transfer_id=transfer_id)]


def payee_outcome(transfer_id: uuid.UUID) -> tuple[str, str | None] | None:
    credit = PayeeCredit.objects.using("shard_01").filter(transfer_id=transfer_id).first()
    return (credit.outcome, credit.reason) if credit else None


def test_parked_cross_shard_transfer_is_failed_and_the_payer_refunded_once() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    transfer = parked_transfer(owner, payer, payee.id, 400)
    assert balance(payer.id) == 600

    result = transfer_force_compensate(transfer.id)

    assert result.outcome == "refunded"
    assert (row(transfer.id).status, row(transfer.id).failure_reason) == ("failed", "operator_compensated")
    assert statuses(transfer.id) == ["pending", "debited", "refunding", "failed"]
    assert payee_outcome(transfer.id) == ("rejected", "operator_compensated")
    assert entry_kinds(payer.id) == ["deposit", "debit", "refund"]
    assert entry_kinds(payee.id) == []
    assert (balance(payer.id), balance(payee.id)) == (1000, 0)
    assert check_ledger().violations == []


def test_running_it_twice_refunds_once_and_the_second_run_changes_nothing() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    transfer = parked_transfer(owner, payer, payee.id, 250)
    transfer_force_compensate(transfer.id)
    with pytest.raises(TransferNotInFlight):
        transfer_force_compensate(transfer.id)
    assert entry_kinds(payer.id) == ["deposit", "debit", "refund"]
    assert balance(payer.id) == 1000
    assert statuses(transfer.id) == ["pending", "debited", "refunding", "failed"]
    assert check_ledger().violations == []


def test_when_the_payee_was_already_credited_the_transfer_completes_and_is_never_refunded() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    transfer = parked_transfer(owner, payer, payee.id, 300)
    saga.payee_step(transfer)  # the credit committed; the worker died before finishing

    result = transfer_force_compensate(transfer.id)

    assert result.outcome == "completed"
    assert row(transfer.id).status == "completed"
    assert row(transfer.id).failure_reason is None
    assert payee_outcome(transfer.id) == ("credited", None)
    assert entry_kinds(payer.id) == ["deposit", "debit"]
    assert entry_kinds(payee.id) == ["credit"]
    assert (balance(payer.id), balance(payee.id)) == (700, 300)
    assert check_ledger().violations == []


def test_an_existing_rejection_is_honoured_with_its_own_reason() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    transfer = parked_transfer(owner, payer, payee.id, 300)
    wallet_set_status(wallet_id=payee.id, status=WalletStatus.FROZEN)
    saga.payee_step(transfer)  # rejected: payee_frozen, committed before the worker died

    assert transfer_force_compensate(transfer.id).outcome == "refunded"
    assert (row(transfer.id).status, row(transfer.id).failure_reason) == ("failed", "payee_frozen")
    assert payee_outcome(transfer.id) == ("rejected", "payee_frozen")
    assert balance(payer.id) == 1000
    assert check_ledger().violations == []


def test_a_pending_transfer_is_failed_without_any_refund() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    # A transfer recorded but never debited. The API debits in the creating transaction, so
    # this state is built directly: it is what any future path that records first would leave.
    now = timezone.now()
    transfer = Transfer(
        id=new_id(bucket_of(payer.id)), client_id=owner.id, payer_id=payer.id, payee_id=payee.id,
        amount_minor=100, currency="USD", status="pending", request_fingerprint="-", created_at=now, updated_at=now,
    )  # fmt: skip
    saga.insert_transfer(transfer, [saga.Event(None, "pending", None, now)])

    assert transfer_force_compensate(transfer.id).outcome == "failed"
    assert (row(transfer.id).status, row(transfer.id).failure_reason) == ("failed", "operator_compensated")
    assert statuses(transfer.id) == ["pending", "failed"]
    assert entry_kinds(payer.id) == ["deposit"]
    assert payee_outcome(transfer.id) is None
    saga.transfer_advance(transfer.id)  # a late saga run finds it terminal and does nothing
    assert entry_kinds(payer.id) == ["deposit"]
    assert check_ledger().violations == []


def test_terminal_and_unknown_transfers_are_refused() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    done = saga.transfer_advance(parked_transfer(owner, payer, payee.id, 100).id)
    assert done.status == "completed"
    with pytest.raises(TransferNotInFlight):
        transfer_force_compensate(done.id)
    assert entry_kinds(payer.id) == ["deposit", "debit"]
    from apps.transfers.errors import TransferNotFound

    with pytest.raises(TransferNotFound):
        transfer_force_compensate(new_id(bucket_of(payer.id)))


def test_ten_concurrent_compensations_refund_exactly_once() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    transfer = parked_transfer(owner, payer, payee.id, 500)
    results = run_concurrently(10, lambda i: transfer_force_compensate(transfer.id))
    refused = [r for r in results if isinstance(r, TransferNotInFlight)]
    done = [r for r in results if not isinstance(r, Exception)]
    assert len(refused) + len(done) == 10, results
    assert {r.outcome for r in done} == {"refunded"}
    assert entry_kinds(payer.id) == ["deposit", "debit", "refund"]
    assert balance(payer.id) == 1000
    assert check_ledger().violations == []


def test_racing_the_saga_never_both_credits_and_refunds() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=10_000)
    transfers = [parked_transfer(owner, payer, payee.id, 100 + i) for i in range(6)]

    def work(i: int) -> object:
        transfer = transfers[i // 2]
        if i % 2:
            return transfer_force_compensate(transfer.id)
        return saga.transfer_advance(transfer.id)  # what a re-driven worker runs

    results = run_concurrently(12, work)
    assert not [r for r in results if isinstance(r, Exception) and not isinstance(r, TransferNotInFlight)], results
    credited = refunded = 0
    for transfer in transfers:
        final = row(transfer.id)
        kinds = raw_query(
            "shard_00", "SELECT kind FROM ledger_entry WHERE reference = %s ORDER BY seq", [str(transfer.id)]
        ) + raw_query("shard_01", "SELECT kind FROM ledger_entry WHERE reference = %s", [str(transfer.id)])
        kinds = sorted(k for (k,) in kinds)
        if final.status == "completed":
            assert kinds == ["credit", "debit"]
            credited += 1
        else:
            assert (final.status, final.failure_reason) == ("failed", "operator_compensated")
            assert kinds == ["debit", "refund"]
            refunded += 1
    assert credited + refunded == 6
    assert balance(payer.id) + balance(payee.id) == 10_000
    assert check_ledger().violations == []


@pytest.mark.slow
def test_with_the_payees_shard_down_it_fails_clearly_and_changes_nothing(payee_shard) -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    transfer = parked_transfer(owner, payer, payee.id, 400)
    payee_shard.stop()
    try:
        with pytest.raises(ShardUnavailable, match="payee's shard shard_01 is unreachable; nothing was changed"):
            transfer_force_compensate(transfer.id)
        assert (row(transfer.id).status, row(transfer.id).parked_at is not None) == ("debited", True)
        assert entry_kinds(payer.id) == ["deposit", "debit"]
        assert statuses(transfer.id) == ["pending", "debited"]
    finally:
        payee_shard.start()
        connections["shard_01"].close()
    assert payee_outcome(transfer.id) is None
    assert transfer_force_compensate(transfer.id).outcome == "refunded"  # once it is back
    assert balance(payer.id) == 1000
    assert check_ledger().violations == []
