"""Deposits and withdrawals follow the transfers' key rules: a key's first answer, success or
refusal, is its answer; the same key with another amount or kind is 422 and moves nothing."""

from typing import Any

import pytest

from apps.ledger.models import WalletStatus
from apps.ledger.services import wallet_set_status
from apps.sharding.routing import alias_for_id
from tests.factories import ALL_DATABASES, api_for, balance_and_entry_count, make_client, make_wallet
from tests.ledger.test_api import error_of
from tests.ledger.test_concurrency import run_concurrently

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def move(api: Any, wallet: Any, kind: str, amount: int, key: str) -> Any:
    return api.post(
        f"/v1/wallets/{wallet.id}/{kind}", {"amount_minor": amount}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )


@pytest.fixture
def setup():
    owner, key = make_client()
    return api_for(key), make_wallet(owner, funded=100)


def state(wallet: Any) -> tuple[int, int]:
    return balance_and_entry_count(wallet.id, alias_for_id(wallet.id))


def test_a_refused_withdrawal_is_the_keys_answer_even_once_funds_arrive(setup) -> None:
    api, wallet = setup
    refused = move(api, wallet, "withdrawals", 500, "w-1")
    assert error_of(refused)[:2] == (422, "insufficient_funds")
    move(api, wallet, "deposits", 1000, "d-1")
    again = move(api, wallet, "withdrawals", 500, "w-1")
    assert again.status_code == 422
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == refused.content
    assert state(wallet) == (1100, 2), "the withdrawal never applied"


def test_a_deposit_key_reused_for_a_withdrawal_is_422_and_moves_nothing(setup) -> None:
    api, wallet = setup
    assert move(api, wallet, "deposits", 50, "k").status_code == 201
    reused = move(api, wallet, "withdrawals", 50, "k")
    assert error_of(reused) == (422, "idempotency_key_reused", "Idempotency-Key")
    assert state(wallet) == (150, 2)


def test_a_key_reused_with_another_amount_is_422(setup) -> None:
    api, wallet = setup
    assert move(api, wallet, "withdrawals", 30, "k").status_code == 201
    assert error_of(move(api, wallet, "withdrawals", 31, "k"))[:2] == (422, "idempotency_key_reused")
    assert state(wallet) == (70, 2)


def test_a_refusal_of_a_frozen_wallet_stays_the_keys_answer_after_unfreezing(setup) -> None:
    api, wallet = setup
    wallet_set_status(wallet_id=wallet.id, status=WalletStatus.FROZEN)
    frozen = move(api, wallet, "deposits", 10, "d")
    assert error_of(frozen)[:2] == (409, "wallet_frozen")
    wallet_set_status(wallet_id=wallet.id, status=WalletStatus.ACTIVE)
    assert move(api, wallet, "deposits", 10, "d").content == frozen.content
    assert move(api, wallet, "deposits", 10, "d2").status_code == 201
    assert state(wallet) == (110, 2)


def test_concurrent_withdrawals_with_one_key_withdraw_once(setup) -> None:
    api, wallet = setup
    responses = run_concurrently(10, lambda i: move(api, wallet, "withdrawals", 60, "same"))
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    assert state(wallet) == (40, 2)
