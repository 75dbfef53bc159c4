"""Races over real connections: threads each with their own PostgreSQL connection."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from typing import Any

import pytest
from django.db import connections

from apps.ledger.errors import InsufficientFunds
from apps.ledger.services import wallet_debit, wallet_fund
from apps.sharding.ids import new_id
from apps.sharding.routing import alias_for_id
from tests.factories import ALL_DATABASES, api_for, balance_and_entry_count, make_client, make_wallet, raw_query

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def run_concurrently(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Start `count` threads at once (a barrier), each running work(i) on its own connections."""
    barrier = Barrier(count)

    def worker(i: int) -> Any:
        barrier.wait()
        try:
            return work(i)
        except Exception as exc:
            return exc
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(worker, range(count)))


def test_fifty_concurrent_debits_never_overdraw() -> None:
    owner, _ = make_client()
    wallet = make_wallet(owner, funded=1000)
    # 50 debits of 30 against 1000: exactly 33 fit.
    results = run_concurrently(
        50,
        lambda i: wallet_debit(wallet_id=wallet.id, transfer_id=new_id(0), amount_minor=30, currency="USD"),
    )
    succeeded = [r for r in results if not isinstance(r, Exception)]
    failed = [r for r in results if isinstance(r, Exception)]
    assert len(succeeded) == 33
    assert all(isinstance(f, InsufficientFunds) for f in failed)
    assert len(failed) == 17
    alias = alias_for_id(wallet.id)
    balance, entries = balance_and_entry_count(wallet.id, alias)
    assert balance == 1000 - 33 * 30 == 10
    assert entries == 34
    [(total,)] = raw_query(alias, "SELECT sum(amount_minor) FROM ledger_entry WHERE wallet_id = %s", [wallet.id])
    assert total == balance
    assert sorted(r.balance_after_minor for r in succeeded) == [1000 - 30 * n for n in range(33, 0, -1)]


def test_same_deposit_reference_from_many_threads_applies_once() -> None:
    owner, _ = make_client()
    wallet = make_wallet(owner)
    results = run_concurrently(20, lambda i: wallet_fund(wallet_id=wallet.id, amount_minor=700, reference="same-key"))
    assert not [r for r in results if isinstance(r, Exception)]
    assert len({r.id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert balance_and_entry_count(wallet.id, alias_for_id(wallet.id)) == (700, 1)


def test_same_deposit_key_over_the_api_from_many_threads_gives_one_effect_and_same_body() -> None:
    owner, key = make_client()
    wallet = make_wallet(owner)

    def deposit(i: int) -> Any:
        return api_for(key).post(
            f"/v1/wallets/{wallet.id}/deposits", {"amount_minor": 1234}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
        )

    responses = run_concurrently(20, deposit)
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 19
    assert balance_and_entry_count(wallet.id, alias_for_id(wallet.id)) == (1234, 1)
