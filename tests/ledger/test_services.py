import uuid
from typing import Any

import pytest

from apps.common.errors import IdempotencyKeyReused
from apps.ledger.errors import CurrencyMismatch, InsufficientFunds, WalletFrozen, WalletNotFound
from apps.ledger.models import EntryKind, WalletStatus
from apps.ledger.services import (
    wallet_credit,
    wallet_debit,
    wallet_fund,
    wallet_refund,
    wallet_set_status,
    wallet_withdraw,
)
from apps.sharding.ids import new_id
from apps.sharding.routing import alias_for_id
from tests.factories import ALL_DATABASES, balance_and_entry_count, bucket_on, make_client, make_wallet, raw_query

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


@pytest.fixture
def owner():
    return make_client()[0]


def _credit_by_owner(owner: Any, wallet_id: uuid.UUID, transfer_id: uuid.UUID, amount: int) -> None:
    """A transfer's USD credit, the transfer made by the wallet's own owner (no refund)."""
    wallet_credit(
        wallet_id=wallet_id, transfer_id=transfer_id, amount_minor=amount, currency="USD", client_id=owner.id,
        refund=False,
    )  # fmt: skip


def state(wallet_id: uuid.UUID) -> tuple[int, int]:
    return balance_and_entry_count(wallet_id, alias_for_id(wallet_id))


def test_fund_adds_money_and_records_one_entry(owner) -> None:
    wallet = make_wallet(owner)
    entry = wallet_fund(wallet_id=wallet.id, amount_minor=5000, reference="dep-1")
    assert (entry.kind, entry.amount_minor, entry.balance_after_minor, entry.seq) == ("deposit", 5000, 5000, 1)
    assert not entry.replayed
    assert state(wallet.id) == (5000, 1)


def test_second_fund_with_same_reference_is_a_noop_returning_the_first_result(owner) -> None:
    wallet = make_wallet(owner)
    first = wallet_fund(wallet_id=wallet.id, amount_minor=5000, reference="dep-1")
    again = wallet_fund(wallet_id=wallet.id, amount_minor=5000, reference="dep-1")
    assert again.replayed
    assert (again.id, again.balance_after_minor, again.created_at) == (first.id, 5000, first.created_at)
    assert state(wallet.id) == (5000, 1)


def test_same_reference_with_another_amount_is_refused_and_changes_nothing(owner) -> None:
    wallet = make_wallet(owner)
    wallet_fund(wallet_id=wallet.id, amount_minor=5000, reference="dep-1")
    with pytest.raises(IdempotencyKeyReused):
        wallet_fund(wallet_id=wallet.id, amount_minor=6000, reference="dep-1")
    assert state(wallet.id) == (5000, 1)


def test_withdraw_beyond_balance_fails_and_changes_nothing(owner) -> None:
    wallet = make_wallet(owner, funded=1000)
    with pytest.raises(InsufficientFunds):
        wallet_withdraw(wallet_id=wallet.id, amount_minor=1001, reference="wd-1")
    assert state(wallet.id) == (1000, 1)
    wallet_withdraw(wallet_id=wallet.id, amount_minor=1000, reference="wd-1")
    assert state(wallet.id) == (0, 2)


def test_replayed_withdrawal_returns_first_result_even_when_funds_are_now_short(owner) -> None:
    wallet = make_wallet(owner, funded=1000)
    first = wallet_withdraw(wallet_id=wallet.id, amount_minor=800, reference="wd-1")
    again = wallet_withdraw(wallet_id=wallet.id, amount_minor=800, reference="wd-1")
    assert again.replayed
    assert again.id == first.id
    assert state(wallet.id) == (200, 2)


def test_debit_credit_refund_each_apply_once_per_transfer(owner) -> None:
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    transfer_id = new_id(bucket_on("shard_00"))
    for _ in range(2):
        wallet_debit(wallet_id=payer.id, transfer_id=transfer_id, amount_minor=300, currency="USD")
        _credit_by_owner(owner, payee.id, transfer_id, 300)
    assert state(payer.id) == (700, 2)
    assert state(payee.id) == (300, 1)
    for _ in range(2):
        wallet_refund(wallet_id=payer.id, transfer_id=transfer_id, amount_minor=300)
    assert state(payer.id) == (1000, 3)
    kinds = raw_query("shard_00", "SELECT kind FROM ledger_entry WHERE wallet_id = %s ORDER BY seq", [payer.id])
    assert [k for (k,) in kinds] == [EntryKind.DEPOSIT, EntryKind.DEBIT, EntryKind.REFUND]


def test_frozen_wallet_can_neither_pay_nor_receive_but_gets_refunds(owner) -> None:
    wallet = make_wallet(owner, funded=1000)
    wallet_set_status(wallet_id=wallet.id, status=WalletStatus.FROZEN)
    transfer_id = new_id(0)
    with pytest.raises(WalletFrozen):
        wallet_debit(wallet_id=wallet.id, transfer_id=transfer_id, amount_minor=1, currency="USD")
    with pytest.raises(WalletFrozen):
        _credit_by_owner(owner, wallet.id, transfer_id, 1)
    with pytest.raises(WalletFrozen):
        wallet_fund(wallet_id=wallet.id, amount_minor=1, reference="dep-x")
    with pytest.raises(WalletFrozen):
        wallet_withdraw(wallet_id=wallet.id, amount_minor=1, reference="wd-x")
    assert state(wallet.id) == (1000, 1)
    wallet_refund(wallet_id=wallet.id, transfer_id=transfer_id, amount_minor=5)
    assert state(wallet.id) == (1005, 2)


def test_currency_mismatch_is_refused(owner) -> None:
    wallet = make_wallet(owner, currency="EUR", funded=1000)
    with pytest.raises(CurrencyMismatch):
        wallet_debit(wallet_id=wallet.id, transfer_id=new_id(0), amount_minor=1, currency="USD")
    with pytest.raises(CurrencyMismatch):
        _credit_by_owner(owner, wallet.id, new_id(0), 1)
    assert state(wallet.id) == (1000, 1)


def test_unknown_wallet_is_not_found() -> None:
    with pytest.raises(WalletNotFound):
        wallet_fund(wallet_id=new_id(7), amount_minor=1, reference="dep-1")


def test_balance_equals_sum_of_entries_and_sequence_has_no_gaps(owner) -> None:
    wallet = make_wallet(owner)
    for i in range(1, 6):
        wallet_fund(wallet_id=wallet.id, amount_minor=i * 100, reference=f"dep-{i}")
    wallet_withdraw(wallet_id=wallet.id, amount_minor=250, reference="wd-1")
    alias = alias_for_id(wallet.id)
    rows = raw_query(
        alias,
        "SELECT seq, amount_minor, balance_after_minor FROM ledger_entry WHERE wallet_id = %s ORDER BY seq",
        [wallet.id],
    )
    assert [seq for seq, _, _ in rows] == list(range(1, 7))
    running = 0
    for _, amount, balance_after in rows:
        running += amount
        assert balance_after == running
    assert state(wallet.id) == (running, 6)


def test_database_refuses_a_negative_balance_even_bypassing_services(owner) -> None:
    import psycopg

    wallet = make_wallet(owner, funded=10)
    alias = alias_for_id(wallet.id)
    with pytest.raises(psycopg.errors.CheckViolation):
        raw_query(alias, "UPDATE ledger_wallet SET balance_minor = -1 WHERE id = %s", [wallet.id])
    assert state(wallet.id) == (10, 1)
