"""Reads across moves: never an answer from a copy a move left behind, histories in order."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from django.test import override_settings

from apps.sharding import moves
from apps.sharding.mapstore import live_map
from apps.sharding.mover import Mover
from apps.sharding.routing import alias_for_id, shard_map
from apps.transfers.saga import transfer_advance
from tests.factories import ALL_DATABASES, api_for, create_transfer, make_client, raw_query
from tests.sharding.moving import move, wallet_in_bucket

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=ALL_DATABASES),
    pytest.mark.slow,
    pytest.mark.usefixtures("file_layout_afterwards"),
]


def _stale(copy: Any) -> None:
    live_map._map = copy
    live_map._checked_at = time.monotonic() + 3600


def test_a_stale_map_never_reads_the_frozen_copy_a_move_left_behind() -> None:
    owner, key = make_client()
    wallet = wallet_in_bucket(owner, 12, funded=100)
    payee = wallet_in_bucket(owner, 13)
    transfer = create_transfer(owner, wallet, payee.id, 10)  # same shard: completed at once
    stale = shard_map()
    move(0, 63, "shard_01", stop_after="switching")  # switched; the source's copy not yet cleaned
    api = api_for(key)
    r = api.post(f"/v1/wallets/{wallet.id}/deposits", {"amount_minor": 7}, format="json", HTTP_IDEMPOTENCY_KEY="d1")
    assert r.status_code == 201, r.json()
    assert raw_query("shard_00", "SELECT balance_minor FROM ledger_wallet WHERE id = %s", [wallet.id]) == [(90,)]
    for path, field, expected in [
        (f"/v1/wallets/{wallet.id}", "balance_minor", 97),
        (f"/v1/wallets/{wallet.id}/balance", "available", 97),
        (f"/v1/transfers/{transfer.id}", "status", "completed"),
    ]:
        _stale(stale)  # this process still routes bucket 12 to shard_00, where the frozen copy is
        r = api.get(path)
        assert r.status_code == 200, (path, r.json())
        assert r.json()[field] == expected, (path, r.json())
        assert alias_for_id(wallet.id) == "shard_01"  # it learned the new owner on the way
    Mover(moves.active_move(), cleanup_delay=0).run()


def test_a_read_of_a_range_owned_by_nobody_waits_then_answers_503_never_the_fenced_data() -> None:
    owner, key = make_client()
    wallet = wallet_in_bucket(owner, 5, funded=100)
    raw_query("shard_00", "UPDATE sharding_bucket_owner SET state = 'fenced' WHERE bucket = 5")  # mid-switch
    try:
        with override_settings(SHARD_MOVE_WAIT_SECONDS=0.3):
            for path in (f"/v1/wallets/{wallet.id}", f"/v1/wallets/{wallet.id}/balance"):
                r = api_for(key).get(path)
                assert r.status_code == 503, (path, r.status_code)
                assert r.json()["error"]["code"] == "shard_moving"
    finally:
        raw_query("shard_00", "UPDATE sharding_bucket_owner SET state = 'owned' WHERE bucket = 5")
    assert api_for(key).get(f"/v1/wallets/{wallet.id}").json()["balance_minor"] == 100


def test_the_status_history_stays_in_order_after_the_transfer_moves_to_a_shard_of_lower_ids() -> None:
    owner, key = make_client()
    payer = wallet_in_bucket(owner, 600, funded=500)  # shard_01: ids from 1 << 48
    payee = wallet_in_bucket(owner, 100)  # shard_00
    transfer = create_transfer(owner, payer, payee.id, 50)  # debited: no worker runs
    move(576, 639, "shard_00", cleanup_delay=0)  # the transfer now lives on shard_00 (lower ids)
    assert transfer_advance(transfer.id).status == "completed"
    [(debited_id,)] = raw_query(
        "shard_00", "SELECT id FROM transfers_event WHERE transfer_id = %s AND to_status = 'debited'", [transfer.id]
    )
    [(completed_id,)] = raw_query(
        "shard_00", "SELECT id FROM transfers_event WHERE transfer_id = %s AND to_status = 'completed'", [transfer.id]
    )
    assert completed_id < debited_id  # what ordering by id would get wrong
    history = api_for(key).get(f"/v1/transfers/{transfer.id}").json()["status_history"]
    assert [h["status"] for h in history] == ["pending", "debited", "completed"]
    assert uuid.UUID(api_for(key).get(f"/v1/transfers/{transfer.id}").json()["id"]) == transfer.id


def test_an_operator_action_that_finds_nothing_to_do_on_a_frozen_copy_looks_again_on_the_owner() -> None:
    from apps.ledger.models import WalletStatus
    from apps.ledger.services import wallet_set_status
    from apps.operators.services import operator_unfreeze_wallet
    from tests.operators.helpers import make_staff

    owner, _key = make_client()
    wallet = wallet_in_bucket(owner, 14, funded=10)
    stale = shard_map()
    move(0, 63, "shard_01", stop_after="switching")  # the active copy on shard_00 stays behind, frozen in time
    wallet_set_status(wallet_id=wallet.id, status=WalletStatus.FROZEN)  # on the owner
    _stale(stale)
    action = operator_unfreeze_wallet(actor=make_staff("opal", "operators"), wallet_id=wallet.id, reason="ticket 7")
    assert action.outcome == "succeeded", action.detail
    assert action.detail == "The wallet is now active (was frozen)."
    assert raw_query("shard_01", "SELECT status FROM ledger_wallet WHERE id = %s", [wallet.id]) == [("active",)]
    Mover(moves.active_move(), cleanup_delay=0).run()


def test_a_waiting_request_whose_bucket_is_fenced_before_it_answers_gets_its_own_result(monkeypatch: Any) -> None:
    import threading

    from apps.transfers.api import views

    owner, key = make_client()
    payer = wallet_in_bucket(owner, 30, funded=100)
    payee = wallet_in_bucket(owner, 31)
    waited = views.wait_until_terminal

    def then_a_switch_begins(transfer: Any, seconds: float) -> Any:
        found = waited(transfer, seconds)
        raw_query("shard_00", "UPDATE sharding_bucket_owner SET state = 'fenced' WHERE bucket = 30")
        unfence = "UPDATE sharding_bucket_owner SET state = 'owned' WHERE bucket = 30"
        threading.Timer(0.5, lambda: raw_query("shard_00", unfence)).start()
        return found

    monkeypatch.setattr(views, "wait_until_terminal", then_a_switch_begins)
    body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": 40, "currency": "USD"}
    first = api_for(key).post("/v1/transfers?wait=5", body, format="json", HTTP_IDEMPOTENCY_KEY="w1")
    monkeypatch.undo()
    assert first.status_code == 201, first.content
    assert first.json()["status"] == "completed"
    again = api_for(key).post("/v1/transfers?wait=5", body, format="json", HTTP_IDEMPOTENCY_KEY="w1")
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert raw_query("shard_00", "SELECT balance_minor FROM ledger_wallet WHERE id = %s", [payer.id]) == [(60,)]


def test_a_process_that_cannot_refresh_its_map_answers_503_for_a_range_that_moved_not_the_old_data(
    monkeypatch: Any,
) -> None:
    from django.db import DatabaseError

    from apps.sharding import mapstore

    owner, key = make_client()
    wallet = wallet_in_bucket(owner, 15, funded=100)
    stale = shard_map()
    move(0, 63, "shard_01", stop_after="switching")  # the old owner's frozen copy is still there

    def control_database_down() -> int:
        raise DatabaseError("the control database does not answer")

    monkeypatch.setattr(mapstore, "read_epoch", control_database_down)
    _stale(stale)
    live_map._checked_at = float("-inf")  # it tries to refresh, and cannot
    with override_settings(SHARD_MOVE_WAIT_SECONDS=0.3):
        r = api_for(key).get(f"/v1/wallets/{wallet.id}")
    assert r.status_code == 503, r.content  # not the frozen copy's 200
    assert r.json()["error"]["code"] == "shard_moving"
    assert alias_for_id(wallet.id) == "shard_00"  # still the stale map: it never reached the control database
    monkeypatch.undo()
    live_map.forget()
    assert api_for(key).get(f"/v1/wallets/{wallet.id}").json()["balance_minor"] == 100
    Mover(moves.active_move(), cleanup_delay=0).run()
