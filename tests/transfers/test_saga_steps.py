"""The saga's steps called directly (no worker): outcomes, idempotency, compensation."""

import threading
import uuid
from datetime import timedelta

import psycopg
import pytest
from django.conf import settings
from django.utils import timezone

from apps.ledger.models import WalletStatus
from apps.ledger.services import wallet_set_status
from apps.sharding.ids import new_id
from apps.sharding.routing import alias_for_id
from apps.transfers import saga
from apps.transfers.checks import check_ledger
from apps.transfers.errors import StaleTransition
from apps.transfers.idempotency import idempotency_records_purge
from apps.transfers.models import IdempotencyRecord, PayeeCredit, Transfer, TransferStatus
from apps.transfers.selectors import pending_out_minor, transfer_events
from apps.transfers.services import transfer_park, transfer_redrive, transfers_claim_stalled
from tests.factories import (
    ALL_DATABASES,
    bucket_on,
    create_transfer,
    entry_kinds,
    make_client,
    make_wallet,
    raw_query,
    wallet_balance,
)

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


@pytest.fixture
def owner():
    return make_client()[0]


def statuses(transfer_id: uuid.UUID) -> list[str]:
    return [e.to_status for e in transfer_events(transfer_id=transfer_id)]


def assert_ledger_ok() -> None:
    report = check_ledger()
    assert report.violations == []


def test_same_shard_transfer_completes_in_one_transaction(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_00")
    transfer = create_transfer(owner, payer, payee.id, 300)
    assert transfer.status == TransferStatus.COMPLETED
    assert statuses(transfer.id) == ["pending", "debited", "completed"]
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (700, 300)
    assert alias_for_id(transfer.id) == "shard_00"
    assert_ledger_ok()


def test_cross_shard_transfer_is_debited_at_once_then_completed_by_the_saga(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    transfer = create_transfer(owner, payer, payee.id, 300)
    assert transfer.status == TransferStatus.DEBITED
    assert alias_for_id(transfer.id) == alias_for_id(payer.id)
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (700, 0)
    assert pending_out_minor(wallet_id=payer.id) == 300
    assert_ledger_ok()  # 300 in flight is accounted for

    done = saga.transfer_advance(transfer.id)
    assert done.status == TransferStatus.COMPLETED
    assert statuses(transfer.id) == ["pending", "debited", "completed"]
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (700, 300)
    assert pending_out_minor(wallet_id=payer.id) == 0
    assert_ledger_ok()


def test_insufficient_funds_fails_without_moving_money(owner) -> None:
    payer = make_wallet(owner, funded=100, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    transfer = create_transfer(owner, payer, payee.id, 101)
    assert (transfer.status, transfer.failure_reason) == ("failed", "insufficient_funds")
    assert statuses(transfer.id) == ["pending", "failed"]
    assert entry_kinds(payer.id) == ["deposit"]
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (100, 0)
    assert_ledger_ok()


def test_frozen_payer_fails_with_payer_frozen(owner) -> None:
    payer = make_wallet(owner, funded=100)
    payee = make_wallet(owner)
    wallet_set_status(wallet_id=payer.id, status=WalletStatus.FROZEN)
    transfer = create_transfer(owner, payer, payee.id, 10)
    assert (transfer.status, transfer.failure_reason) == ("failed", "payer_frozen")
    assert wallet_balance(payer.id) == 100


@pytest.mark.parametrize("payee_shard", ["shard_00", "shard_01"])
@pytest.mark.parametrize("problem", ["frozen", "missing", "other_currency"])
def test_payee_that_cannot_receive_ends_failed_with_payer_whole(owner, payee_shard, problem) -> None:
    payer = make_wallet(owner, funded=500, shard="shard_00")
    if problem == "missing":
        payee_id = new_id(bucket_on(payee_shard))
    else:
        payee = make_wallet(owner, shard=payee_shard, currency="EUR" if problem == "other_currency" else "USD")
        payee_id = payee.id
        if problem == "frozen":
            wallet_set_status(wallet_id=payee.id, status=WalletStatus.FROZEN)
    transfer = saga.transfer_advance(create_transfer(owner, payer, payee_id, 200).id)
    reason = {"frozen": "payee_frozen", "missing": "payee_not_found", "other_currency": "payee_currency_mismatch"}
    assert (transfer.status, transfer.failure_reason) == ("failed", reason[problem])
    assert wallet_balance(payer.id) == 500
    if payee_shard == "shard_00":  # same shard: refused before any money moved
        assert statuses(transfer.id) == ["pending", "failed"]
        assert entry_kinds(payer.id) == ["deposit"]
    else:  # cross shard: debited, then compensated
        assert statuses(transfer.id) == ["pending", "debited", "refunding", "failed"]
        assert entry_kinds(payer.id) == ["deposit", "debit", "refund"]
        credit = PayeeCredit.objects.using(alias_for_id(payee_id)).get(transfer_id=transfer.id)
        assert (credit.outcome, credit.reason) == ("rejected", reason[problem])
    if problem != "missing":
        assert wallet_balance(payee_id) == 0
    assert_ledger_ok()


def test_every_step_run_twice_has_no_double_effect(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    transfer = create_transfer(owner, payer, payee.id, 250)
    for _ in range(2):
        saga.payer_step(transfer.id)
    first = saga.payee_step(transfer)
    second = saga.payee_step(transfer)
    assert first == second
    for _ in range(2):
        saga.finish_step(transfer.id, first)
    for _ in range(2):
        assert saga.transfer_advance(transfer.id).status == TransferStatus.COMPLETED
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (750, 250)
    assert entry_kinds(payer.id) == ["deposit", "debit"]
    assert entry_kinds(payee.id) == ["credit"]
    assert statuses(transfer.id) == ["pending", "debited", "completed"]
    assert_ledger_ok()


def test_refund_step_run_twice_refunds_once(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    wallet_set_status(wallet_id=payee.id, status=WalletStatus.FROZEN)
    transfer = create_transfer(owner, payer, payee.id, 250)
    rejection = saga.payee_step(transfer)
    # Unfreezing afterwards does not turn the recorded rejection into a credit.
    wallet_set_status(wallet_id=payee.id, status=WalletStatus.ACTIVE)
    assert saga.payee_step(transfer).outcome == "rejected"
    for _ in range(2):
        saga.finish_step(transfer.id, rejection)
    assert entry_kinds(payer.id) == ["deposit", "debit", "refund"]
    assert entry_kinds(payee.id) == []
    assert wallet_balance(payer.id) == 1000
    assert_ledger_ok()


def test_a_transition_from_a_stale_status_is_refused(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    transfer = create_transfer(owner, payer, payee.id, 10)
    stale = Transfer.objects.using("shard_00").get(id=transfer.id)
    stale.status = TransferStatus.PENDING
    with pytest.raises(StaleTransition):
        saga.transition(stale, TransferStatus.FAILED, reason="insufficient_funds")
    assert Transfer.objects.using("shard_00").get(id=transfer.id).status == TransferStatus.DEBITED


def test_sweeper_claims_stalled_transfers_once_per_window_but_not_parked_or_terminal_ones(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    stalled = create_transfer(owner, payer, payee.id, 10)
    parked = create_transfer(owner, payer, payee.id, 10)
    done = saga.transfer_advance(create_transfer(owner, payer, payee.id, 10).id)
    assert done.is_terminal
    assert transfer_park(parked.id, "OperationalError: shard down")
    raw_query("shard_00", "UPDATE transfers_transfer SET updated_at = now() - interval '1 hour'")
    assert transfers_claim_stalled(alias="shard_00", older_than=timedelta(hours=2), limit=10) == []
    assert transfers_claim_stalled(alias="shard_00", older_than=timedelta(minutes=1), limit=10) == [stalled.id]
    # Claimed: not sent again until another window has passed without anyone touching it.
    assert transfers_claim_stalled(alias="shard_00", older_than=timedelta(minutes=1), limit=10) == []
    assert transfer_redrive(parked.id)
    row = Transfer.objects.using("shard_00").get(id=parked.id)
    assert row.parked_at is None
    assert not transfer_redrive(done.id), "terminal transfers cannot be re-driven"


def test_purge_removes_idempotency_records_older_than_retention_only(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_00")
    old = create_transfer(owner, payer, payee.id, 10)
    new = create_transfer(owner, payer, payee.id, 10)
    IdempotencyRecord.objects.using("shard_00").filter(transfer_id=old.id).update(
        created_at=timezone.now() - timedelta(hours=25)
    )
    assert idempotency_records_purge() == 1
    remaining = set(IdempotencyRecord.objects.using("shard_00").values_list("transfer_id", flat=True))
    assert remaining == {new.id}
    assert Transfer.objects.using("shard_00").filter(id=old.id).exists(), "the transfer itself is kept"


def test_check_ledger_reports_tampering(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    transfer = saga.transfer_advance(create_transfer(owner, payer, payee.id, 100).id)
    assert_ledger_ok()
    # Money created out of thin air: a balance that no entry explains.
    raw_query("shard_01", "UPDATE ledger_wallet SET balance_minor = balance_minor + 5 WHERE id = %s", [payee.id])
    violations = check_ledger().violations
    assert any("sum of entries" in v for v in violations)
    assert any("USD: balances" in v for v in violations)
    raw_query("shard_01", "UPDATE ledger_wallet SET balance_minor = balance_minor - 5 WHERE id = %s", [payee.id])
    # A completed transfer that also got refunded.
    raw_query("shard_00", "UPDATE transfers_transfer SET status = 'failed', failure_reason = 'payee_frozen'")
    violations = check_ledger().violations
    assert any(str(transfer.id) in v and "credit" in v for v in violations)


def test_check_ledger_pairs_each_credit_with_its_transfer_across_shards(owner) -> None:
    """The shards' streams are merged by transfer id: a credit that moved to another
    reference is found as an orphan, and its transfer as uncredited; the others pair."""
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    transfers = [saga.transfer_advance(create_transfer(owner, payer, payee.id, 10 + i).id) for i in range(5)]
    assert [t.status for t in transfers] == ["completed"] * 5
    assert_ledger_ok()
    tampered, stranger = transfers[2], uuid.uuid4()
    raw_query(
        "shard_01",
        "UPDATE ledger_entry SET reference = %s WHERE reference = %s AND kind = 'credit'",
        [str(stranger), str(tampered.id)],
    )
    report = check_ledger()
    assert f"entries ['credit'] reference {stranger}, which is no transfer" in report.violations
    assert any(str(tampered.id) in v and "0 credit(s)" in v for v in report.violations)
    others = [str(t.id) for t in transfers if t.id != tampered.id]
    assert not [v for v in report.violations if any(other in v for other in others)]
    assert report.transfers == 5


def test_check_ledger_command_exits_non_zero_with_a_report_on_violation(owner) -> None:
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    create_transfer(owner, payer, payee.id, 100)  # left in flight on purpose
    out = StringIO()
    call_command("check_ledger", stdout=out)
    assert "ledger OK" in out.getvalue()
    assert "in flight 100" in out.getvalue()
    raw_query("shard_00", "UPDATE ledger_wallet SET balance_minor = 1 WHERE id = %s", [payer.id])
    err = StringIO()
    with pytest.raises(CommandError, match="violation"):
        call_command("check_ledger", stdout=StringIO(), stderr=err)
    assert str(payer.id) in err.getvalue()


def test_drain_completes_many_debited_transfers_in_a_batch_and_leaves_refusals(owner) -> None:
    payer = make_wallet(owner, funded=10_000, shard="shard_00")
    payees = [make_wallet(owner, shard="shard_01") for _ in range(3)]
    frozen = make_wallet(owner, shard="shard_01")
    wallet_set_status(wallet_id=frozen.id, status=WalletStatus.FROZEN)
    ok = [create_transfer(owner, payer, payees[i % 3].id, 100 + i) for i in range(9)]
    refused = create_transfer(owner, payer, frozen.id, 50)
    result = saga.drain_debited("shard_00")
    assert (result.claimed, result.completed) == (10, 9)
    assert result.left_over == [refused.id]
    assert result.transient == []
    assert {Transfer.objects.using("shard_00").get(id=t.id).status for t in ok} == {"completed"}
    assert statuses(ok[0].id) == ["pending", "debited", "completed"]
    assert sum(wallet_balance(p.id) for p in payees) == sum(100 + i for i in range(9))
    # The refused one is left to the one-by-one path, which refunds it.
    assert saga.transfer_advance(refused.id).failure_reason == "payee_frozen"
    # A second drain finds nothing to do and moves no money.
    again = saga.drain_debited("shard_00")
    assert (again.claimed, again.completed) == (0, 0)
    assert wallet_balance(payer.id) == 10_000 - sum(100 + i for i in range(9))
    assert_ledger_ok()


def test_a_claimed_transfer_the_drain_cannot_lock_is_handed_over_not_dropped(owner, monkeypatch) -> None:
    """The drain's claim commits an attempt, then it locks the claimed rows skipping locked
    ones: a row another transaction holds at that instant must come back as a left-over
    (run by its own task), not wait for the sweeper's stall window."""
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    held, free = create_transfer(owner, payer, payee.id, 100), create_transfer(owner, payer, payee.id, 50)
    db = settings.DATABASES["shard_00"]
    conninfo = f"host={db['HOST']} port={db['PORT']} dbname={db['NAME']} user={db['USER']}"
    claimed, locked, release = threading.Event(), threading.Event(), threading.Event()

    def hold_row() -> None:  # between the claim's commit and the drain's lock
        assert claimed.wait(30)
        with psycopg.connect(conninfo) as conn:
            conn.execute("SELECT 1 FROM transfers_transfer WHERE id = %s FOR KEY SHARE", [held.id])
            locked.set()
            release.wait(30)

    original = saga._drain_claimed

    def after_the_claim(alias, ids, now):
        claimed.set()
        assert locked.wait(10)
        return original(alias, ids, now)

    monkeypatch.setattr(saga, "_drain_claimed", after_the_claim)
    holder = threading.Thread(target=hold_row)
    holder.start()
    try:
        result = saga.drain_debited("shard_00")
    finally:
        claimed.set()
        release.set()
        holder.join()
    assert (result.claimed, result.completed) == (1, 1)  # both claimed; one locked and credited
    assert result.left_over == [held.id]
    assert Transfer.objects.using("shard_00").get(id=free.id).status == "completed"
    assert saga.transfer_advance(held.id).status == "completed"
    assert_ledger_ok()


def test_drain_after_a_crash_between_credit_and_completion_completes_without_crediting_twice(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    transfer = create_transfer(owner, payer, payee.id, 100)
    saga.payee_step(transfer)  # the credit committed, then the process died before completing
    result = saga.drain_debited("shard_00")
    assert (result.claimed, result.completed, result.left_over) == (1, 0, [transfer.id])
    assert saga.transfer_advance(transfer.id).status == "completed"
    assert entry_kinds(payee.id) == ["credit"]
    assert wallet_balance(payee.id) == 100
    assert_ledger_ok()


def test_drain_skips_transfers_already_handed_to_their_own_retries(owner) -> None:
    from apps.transfers.services import transfer_begin_attempt

    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    transfer = create_transfer(owner, payer, payee.id, 100)
    assert transfer_begin_attempt(transfer.id) == 1
    assert saga.drain_debited("shard_00").claimed == 0
    assert wallet_balance(payee.id) == 0


MAX = 2**63 - 1


def test_a_credit_that_would_pass_the_bigint_limit_is_refused_and_the_payer_refunded(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    far = make_wallet(owner, shard="shard_01", funded=MAX - 10)
    near = make_wallet(owner, shard="shard_00", funded=MAX - 10)
    cross = saga.transfer_advance(create_transfer(owner, payer, far.id, 11).id)
    assert (cross.status, cross.failure_reason) == ("failed", "payee_balance_limit")
    same = create_transfer(owner, payer, near.id, 11)
    assert (same.status, same.failure_reason) == ("failed", "payee_balance_limit")
    assert (wallet_balance(payer.id), wallet_balance(far.id), wallet_balance(near.id)) == (1000, MAX - 10, MAX - 10)
    # Up to the limit itself is fine.
    assert saga.transfer_advance(create_transfer(owner, payer, far.id, 10).id).status == "completed"
    assert wallet_balance(far.id) == MAX
    assert_ledger_ok()


def test_a_deposit_past_the_bigint_limit_is_refused_and_changes_nothing(owner) -> None:
    from apps.ledger.errors import BalanceLimitExceeded
    from apps.ledger.services import wallet_fund

    wallet = make_wallet(owner, funded=MAX - 1)
    with pytest.raises(BalanceLimitExceeded):
        wallet_fund(wallet_id=wallet.id, amount_minor=2, reference="over")
    assert wallet_balance(wallet.id) == MAX - 1
    assert entry_kinds(wallet.id) == ["deposit"]


@pytest.mark.parametrize(
    ("payee_shard", "funded", "history", "reason"),
    [
        ("shard_00", 1000, ["pending", "debited", "completed"], None),
        ("shard_01", 1000, ["pending", "debited", "completed"], None),
        ("shard_00", 10, ["pending", "failed"], "insufficient_funds"),
    ],
)
def test_a_transfer_stored_as_pending_runs_its_first_step_by_the_same_rules(
    owner, payee_shard, funded, history, reason
) -> None:
    payer = make_wallet(owner, funded=funded, shard="shard_00")
    payee = make_wallet(owner, shard=payee_shard)
    now = timezone.now()
    transfer = Transfer(
        id=new_id(bucket_on("shard_00")), client_id=owner.id, payer_id=payer.id, payee_id=payee.id,
        amount_minor=100, currency="USD", status="pending", request_fingerprint="-", created_at=now, updated_at=now,
    )  # fmt: skip
    saga.insert_transfer(transfer, [saga.Event(None, "pending", None, now)])
    done = saga.transfer_advance(transfer.id)
    assert (done.status, done.failure_reason) == (history[-1], reason)
    assert statuses(transfer.id) == history
    assert wallet_balance(payee.id) == (100 if reason is None else 0)
    assert_ledger_ok()


def test_a_retry_drain_finishes_transfers_whose_tasks_are_retrying_and_leaves_the_rest(owner) -> None:
    """After an outage the transfers that met it are each with their own task (attempts > 0):
    `drain_retried` finishes those idle for a moment in one batch, without counting an attempt
    or touching the drain's own (attempts = 0) or one its task just touched."""
    from apps.transfers.services import transfer_begin_attempt

    payer = make_wallet(owner, funded=10_000, shard="shard_00")
    payees = [make_wallet(owner, shard="shard_01") for _ in range(3)]
    retrying = [create_transfer(owner, payer, payees[i % 3].id, 100 + i) for i in range(5)]
    busy = create_transfer(owner, payer, payees[0].id, 7)  # its task has just begun an attempt
    fresh = create_transfer(owner, payer, payees[1].id, 9)  # for the drain (attempts = 0)
    parked = create_transfer(owner, payer, payees[2].id, 11)  # its retries spent: an operator's
    for transfer in [*retrying, busy, parked]:
        assert transfer_begin_attempt(transfer.id) == 1
        assert transfer_begin_attempt(transfer.id) == 2
    assert transfer_park(parked.id, "gave up")
    raw_query(
        "shard_00",
        "UPDATE transfers_transfer SET updated_at = updated_at - interval '5 seconds' WHERE id = ANY(%s)",
        [[t.id for t in [*retrying, parked]]],
    )
    assert saga.drain_retried("shard_00", limit=2) == 5  # in pages of two
    rows = {t.id: Transfer.objects.using("shard_00").get(id=t.id) for t in [*retrying, busy, fresh, parked]}
    assert {rows[t.id].status for t in retrying} == {"completed"}
    assert {rows[t.id].attempts for t in retrying} == {2}  # its task's count, not one more
    assert (rows[busy.id].status, rows[fresh.id].status, rows[fresh.id].attempts) == ("debited", "debited", 0)
    assert (rows[parked.id].status, rows[parked.id].parked_at is not None) == ("debited", True)
    assert sum(wallet_balance(p.id) for p in payees) == sum(100 + i for i in range(5))
    assert statuses(retrying[0].id) == ["pending", "debited", "completed"]
    # Run again, or by the task that then comes: nothing moves twice.
    assert saga.drain_retried("shard_00") == 0
    assert saga.transfer_advance(retrying[0].id).status == "completed"
    assert entry_kinds(payees[0].id) == ["credit", "credit"]
    assert_ledger_ok()
