"""Naming another client's wallet as `from` costs its owner nothing: its row lock is never taken or waited for."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from django.db import connections

from apps.sharding.routing import alias_for_id
from tests.factories import ALL_DATABASES, api_for, make_client, make_wallet

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


class RowLock:
    """Holds a wallet's row lock from another connection, as the owner's own payment would."""

    def __init__(self, wallet_id: Any) -> None:
        params = connections[alias_for_id(wallet_id)].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("prepare_threshold", None)
        self.conn = psycopg.connect(**params)
        self.conn.execute("SELECT 1 FROM ledger_wallet WHERE id = %s FOR UPDATE", [wallet_id])

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def test_a_foreign_from_does_not_wait_for_the_owners_lock() -> None:
    victim, _ = make_client("victim")
    thief, attacker_key = make_client("attacker")
    wallet, own = make_wallet(victim, funded=1000), make_wallet(thief)
    attacker = api_for(attacker_key)
    lock = RowLock(wallet.id)
    try:
        started = time.monotonic()
        body = {"from": str(wallet.id), "to": str(own.id), "amount_minor": 1, "currency": "USD"}
        transfer = attacker.post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY="probe-1")
        hold = attacker.post("/v1/holds", body, format="json", HTTP_IDEMPOTENCY_KEY="probe-2")
        elapsed = time.monotonic() - started
    finally:
        lock.release()
    # Answered as for a wallet that does not exist, without waiting for the lock (lock_timeout is 5 s).
    assert (transfer.status_code, transfer.json()["error"]["code"]) == (404, "wallet_not_found")
    assert (hold.status_code, hold.json()["error"]["code"]) == (404, "wallet_not_found")
    assert elapsed < 4


def test_the_owners_withdrawals_are_not_slowed_by_a_flood_naming_its_wallet() -> None:
    victim, victim_key = make_client("victim")
    _, attacker_key = make_client("attacker")
    wallet, elsewhere = make_wallet(victim, funded=10_000), make_wallet(victim)
    stop = threading.Event()
    refused: list[int] = []

    def flood() -> None:
        attacker = api_for(attacker_key)
        n = 0
        while not stop.is_set():
            n += 1
            body = {"from": str(wallet.id), "to": str(elsewhere.id), "amount_minor": 1, "currency": "USD"}
            response = attacker.post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY=f"f{n}")
            refused.append(response.status_code)
        connections.close_all()

    flooders = [threading.Thread(target=flood) for _ in range(2)]
    for thread in flooders:
        thread.start()
    owner = api_for(victim_key)
    try:
        for n in range(20):
            response = owner.post(f"/v1/wallets/{wallet.id}/withdrawals", {"amount_minor": 1}, format="json",
                                  HTTP_IDEMPOTENCY_KEY=f"w{n}")  # fmt: skip
            assert response.status_code == 201
    finally:
        stop.set()
        for thread in flooders:
            thread.join()
    assert refused
    assert set(refused) == {404}
    wallet.refresh_from_db()
    assert wallet.balance_minor == 10_000 - 20
