"""Holds on real shards: reserve, capture (whole, part, across shards), void, expire; one resolution only."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.common.errors import DomainError, IdempotencyKeyReused
from apps.holds.errors import CaptureExceedsHold, HoldExpired, HoldNotHeld
from apps.holds.models import Hold
from apps.holds.selectors import held_minor
from apps.holds.services import HoldRequest, hold_capture, hold_create, hold_void, holds_expire_due
from apps.ledger.errors import WalletFrozen
from apps.ledger.models import WalletStatus
from apps.ledger.services import wallet_set_status
from apps.transfers import saga
from apps.transfers.checks import check_ledger
from apps.transfers.models import Transfer
from tests.factories import ALL_DATABASES, entry_kinds, make_client, make_wallet, raw_query, wallet_balance

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


@pytest.fixture
def owner():
    return make_client()[0]


def hold(owner, payer, payee, amount: int, key: str | None = None, **kw):
    request = HoldRequest(
        client_id=owner.id, payer_id=payer.id, payee_id=payee.id, amount_minor=amount, currency="USD",
        expires_at=kw.get("expires_at", timezone.now() + timedelta(hours=1)), idempotency_key=key or str(uuid.uuid4()),
    )  # fmt: skip
    return hold_create(request)


def ledger_ok() -> None:
    report = check_ledger()
    assert report.violations == []


def stored(hold_id: uuid.UUID) -> Hold:
    from apps.sharding.routing import alias_for_id

    return Hold.objects.using(alias_for_id(hold_id)).get(id=hold_id)


def test_a_hold_reserves_money_out_of_the_available_balance_and_conservation_counts_it(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    created = hold(owner, payer, payee, 300)
    assert (created.status, created.hold.status, created.replayed) == (201, "held", False)
    assert wallet_balance(payer.id) == 700  # available
    assert held_minor(wallet_id=payer.id) == 300
    assert entry_kinds(payer.id) == ["deposit", "hold"]
    report = check_ledger()
    assert report.violations == []
    assert report.totals["USD"].held == 300
    assert report.holds == 1


def test_a_repeated_key_replays_the_first_answer_and_another_body_is_refused(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_00")
    expires = timezone.now() + timedelta(hours=1)
    first = hold(owner, payer, payee, 300, key="k1", expires_at=expires)
    again = hold(owner, payer, payee, 300, key="k1", expires_at=expires)
    assert again.replayed
    assert (again.status, again.body) == (first.status, first.body)
    assert again.hold.id == first.hold.id
    with pytest.raises(IdempotencyKeyReused):
        hold(owner, payer, payee, 301, key="k1", expires_at=expires)
    assert wallet_balance(payer.id) == 700
    assert Hold.objects.using("shard_00").count() == 1


def test_a_hold_beyond_the_funds_fails_with_the_reason_and_moves_nothing(owner) -> None:
    payer = make_wallet(owner, funded=100, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    created = hold(owner, payer, payee, 101)
    assert (created.hold.status, created.hold.failure_reason) == ("failed", "insufficient_funds")
    assert wallet_balance(payer.id) == 100
    assert entry_kinds(payer.id) == ["deposit"]
    wallet_set_status(wallet_id=payer.id, status=WalletStatus.FROZEN)
    assert hold(owner, payer, payee, 10).hold.failure_reason == "payer_frozen"
    ledger_ok()


def test_void_gives_the_amount_back_once(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    held = hold(owner, payer, payee, 300).hold
    voided = hold_void(held.id, client_id=owner.id)
    assert voided.status == "voided"
    assert wallet_balance(payer.id) == 1000
    assert held_minor(wallet_id=payer.id) == 0
    with pytest.raises(HoldNotHeld) as second:
        hold_void(held.id, client_id=owner.id)
    assert second.value.hold.status == "voided"
    with pytest.raises(HoldNotHeld):
        hold_capture(held.id, client_id=owner.id)
    assert entry_kinds(payer.id) == ["deposit", "hold", "release"]
    ledger_ok()


def test_another_client_cannot_see_or_resolve_a_hold(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    held = hold(owner, payer, payee, 300).hold
    stranger, _ = make_client("stranger")
    with pytest.raises(DomainError) as refused:
        hold_capture(held.id, client_id=stranger.id)
    assert refused.value.code == "hold_not_found"
    assert stored(held.id).status == "held"


def test_a_partial_capture_on_one_shard_pays_the_payee_and_releases_the_rest(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_00")
    held = hold(owner, payer, payee, 300).hold
    captured = hold_capture(held.id, client_id=owner.id, amount_minor=120)
    assert (captured.status, captured.captured_minor) == ("captured", 120)
    transfer = Transfer.objects.using("shard_00").get(id=captured.transfer_id)
    assert (transfer.status, transfer.amount_minor, transfer.payee_id) == ("completed", 120, payee.id)
    assert wallet_balance(payer.id) == 880
    assert wallet_balance(payee.id) == 120
    assert held_minor(wallet_id=payer.id) == 0
    assert entry_kinds(payer.id) == ["deposit", "hold", "release", "debit"]
    ledger_ok()


def test_a_capture_across_shards_runs_through_the_saga(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    held = hold(owner, payer, payee, 300).hold
    captured = hold_capture(held.id, client_id=owner.id)
    transfer = Transfer.objects.using("shard_00").get(id=captured.transfer_id)
    assert transfer.status == "debited"
    ledger_ok()  # the captured amount is in flight now, no longer held
    assert saga.transfer_advance(transfer.id).status == "completed"
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (700, 300)
    ledger_ok()


def test_a_capture_is_refused_beyond_the_hold_after_expiry_and_for_a_frozen_payer(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    held = hold(owner, payer, payee, 300).hold
    with pytest.raises(CaptureExceedsHold):
        hold_capture(held.id, client_id=owner.id, amount_minor=301)
    wallet_set_status(wallet_id=payer.id, status=WalletStatus.FROZEN)
    with pytest.raises(WalletFrozen):
        hold_capture(held.id, client_id=owner.id)
    assert stored(held.id).status == "held"  # kept: the operator or the client decides
    wallet_set_status(wallet_id=payer.id, status=WalletStatus.ACTIVE)
    raw_query("shard_00", "UPDATE holds_hold SET expires_at = now() - interval '1 second' WHERE id = %s", [held.id])
    with pytest.raises(HoldExpired):
        hold_capture(held.id, client_id=owner.id)
    assert wallet_balance(payer.id) == 700
    ledger_ok()


def test_expiry_releases_due_holds_only(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    due, later = hold(owner, payer, payee, 300).hold, hold(owner, payer, payee, 200).hold
    raw_query("shard_00", "UPDATE holds_hold SET expires_at = now() - interval '1 second' WHERE id = %s", [due.id])
    assert holds_expire_due("shard_00") == 1
    assert (stored(due.id).status, stored(later.id).status) == ("expired", "held")
    assert wallet_balance(payer.id) == 800
    assert holds_expire_due("shard_00") == 0
    with pytest.raises(HoldNotHeld):
        hold_capture(due.id, client_id=owner.id)
    ledger_ok()


def race_once(owner, payer, payee) -> str:
    """A capture, a void and the expiry job at the same instant; returns the hold's end state."""
    held = hold(owner, payer, payee, 1000).hold
    raw_query("shard_00", "UPDATE holds_hold SET expires_at = now() + interval '150 milliseconds' WHERE id = %s",
              [held.id])  # fmt: skip
    outcomes: list[str] = []
    start = threading.Barrier(3)

    def run(action) -> None:
        from django.db import connections

        start.wait()
        try:
            action()
            outcomes.append("won")
        except (HoldNotHeld, HoldExpired):
            outcomes.append("lost")
        finally:
            connections.close_all()

    def expire() -> None:
        time.sleep(0.15)
        if holds_expire_due("shard_00") == 0:
            raise HoldNotHeld(stored(held.id))

    actions = [
        lambda: hold_capture(held.id, client_id=owner.id, amount_minor=400),
        lambda: hold_void(held.id, client_id=owner.id),
        expire,
    ]
    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost", "lost", "won"]
    return stored(held.id).status


def test_capture_void_and_expiry_racing_resolve_each_hold_once(owner) -> None:
    payer = make_wallet(owner, funded=10_000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    ends = [race_once(owner, payer, payee) for _ in range(4)]
    assert set(ends) <= {"captured", "voided", "expired"}
    for transfer in Transfer.objects.using("shard_00").filter(status="debited"):
        saga.transfer_advance(transfer.id)
    captured = sum(h.captured_minor or 0 for h in Hold.objects.using("shard_00").all())
    assert wallet_balance(payer.id) == 10_000 - captured
    assert wallet_balance(payee.id) == captured
    ledger_ok()


def test_a_capture_to_a_payee_frozen_meanwhile_fails_its_transfer_and_refunds_the_payer(owner) -> None:
    """Documented: the hold is consumed by the capture (status `captured`); its transfer fails
    `payee_frozen` and the captured amount comes back to the payer's available balance."""
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    held = hold(owner, payer, payee, 300).hold
    wallet_set_status(wallet_id=payee.id, status=WalletStatus.FROZEN)
    captured = hold_capture(held.id, client_id=owner.id, amount_minor=200)
    transfer = saga.transfer_advance(captured.transfer_id)
    assert (transfer.status, transfer.failure_reason) == ("failed", "payee_frozen")
    assert stored(held.id).status == "captured"
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (1000, 0)
    assert entry_kinds(payer.id) == ["deposit", "hold", "release", "debit", "refund"]
    ledger_ok()


def test_the_expiry_of_a_hold_not_yet_due_changes_nothing(owner) -> None:
    from apps.holds.services import HoldNotDue

    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    held = hold(owner, payer, payee, 300).hold
    with pytest.raises(HoldNotDue):
        hold_void(held.id, client_id=None, expired=True)
    assert stored(held.id).status == "held"
    assert wallet_balance(payer.id) == 700
    # A refusal names the state it found, resolved or not.
    assert "held" in HoldNotHeld(stored(held.id)).message
