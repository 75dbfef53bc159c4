"""The outbox: every change a client can be told about writes its event in its own transaction,
rendered as the API renders the object, seen only by the client it concerns."""

from __future__ import annotations

import json
import uuid

import pytest
from django.db import transaction

from apps.events.models import Event
from apps.events.rendering import with_objects
from apps.holds.rendering import hold_out
from apps.ledger.api.serializers import WalletOut, entry_out
from apps.ledger.models import LedgerEntry, Wallet, WalletStatus
from apps.ledger.services import wallet_fund, wallet_set_status
from apps.sharding.ids import bucket_of
from apps.sharding.routing import alias_for_id
from apps.transfers import saga
from apps.transfers.api.serializers import transfer_out
from apps.transfers.models import Transfer
from tests.factories import ALL_DATABASES, api_for, make_client, make_wallet

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def events_of(object_id: uuid.UUID) -> list[Event]:
    return list(Event.objects.using(alias_for_id(object_id)).filter(object_id=object_id).order_by("seq"))


def data(event: Event) -> dict:
    """The event's object as a reader gets it (a ledger entry's event stores none: it is rendered from the entry)."""
    [read] = with_objects(alias_for_id(event.id), [event])
    return json.loads(read.data)


def test_a_same_shard_transfer_writes_one_event_for_its_payer_client_and_one_for_the_payee_owner() -> None:
    payer_client, key = make_client("payer-co")
    payee_client, payee_key = make_client("payee-co")
    payer = make_wallet(payer_client, funded=1000, shard="shard_00")
    payee = make_wallet(payee_client, shard="shard_00")
    created = api_for(key).post(
        "/v1/transfers", {"from": str(payer.id), "to": str(payee.id), "amount_minor": 300, "currency": "USD"},
        format="json", HTTP_IDEMPOTENCY_KEY="t-1",
    )  # fmt: skip
    assert created.status_code == 201, created.content
    transfer = Transfer.objects.using("shard_00").get(id=created.json()["id"])
    [completed] = events_of(transfer.id)
    assert (completed.type, completed.seq, completed.client_id) == ("transfer.completed", 1, payer_client.id)
    assert data(completed) == transfer_out(transfer)
    assert bucket_of(completed.id) == bucket_of(transfer.id)

    credit = LedgerEntry.objects.using("shard_00").get(wallet_id=payee.id, kind="credit")
    [received] = events_of(credit.id)
    assert (received.type, received.client_id) == ("transfer.received", payee_client.id)
    assert received.data is None  # an entry never changes: its event stores no copy of it
    assert data(received) == dict(entry_out(credit))
    assert data(received)["reference"] == str(transfer.id)
    # The payee's client sees the credit, not the payer's transfer.
    seen = api_for(payee_key).get("/v1/events").json()["data"]
    assert [e["type"] for e in seen] == ["transfer.received", "wallet.created"]
    assert api_for(payee_key).get(f"/v1/events/{completed.id}").status_code == 404


def test_wallet_deposit_withdrawal_and_freezes_are_events_of_the_owner_in_order() -> None:
    owner, key = make_client()
    wallet = make_wallet(owner, shard="shard_01")
    wallet_fund(wallet_id=wallet.id, amount_minor=500, reference="dep-1")
    api = api_for(key)
    withdrawn = api.post(f"/v1/wallets/{wallet.id}/withdrawals", {"amount_minor": 200}, format="json",
                         HTTP_IDEMPOTENCY_KEY="w-1")  # fmt: skip
    assert withdrawn.status_code == 201, withdrawn.content
    wallet_set_status(wallet_id=wallet.id, status=WalletStatus.FROZEN)
    wallet_set_status(wallet_id=wallet.id, status=WalletStatus.FROZEN)  # no change: no event
    wallet_set_status(wallet_id=wallet.id, status=WalletStatus.ACTIVE)

    events = events_of(wallet.id)
    assert [(e.type, e.seq) for e in events] == [("wallet.created", 1), ("wallet.frozen", 2), ("wallet.unfrozen", 3)]
    assert data(events[-1]) == dict(WalletOut(Wallet.objects.using("shard_01").get(id=wallet.id)).data)
    entries = LedgerEntry.objects.using("shard_01").filter(wallet_id=wallet.id).order_by("seq")
    assert [events_of(e.id)[0].type for e in entries] == ["deposit.succeeded", "withdrawal.succeeded"]
    listed = api.get("/v1/events", {"limit": 2}).json()
    assert [e["type"] for e in listed["data"]] == ["wallet.unfrozen", "wallet.frozen"]
    rest = api.get("/v1/events", {"cursor": listed["next_cursor"]}).json()
    assert [e["type"] for e in rest["data"]] == ["withdrawal.succeeded", "deposit.succeeded", "wallet.created"]
    only = api.get("/v1/events", {"type": ["wallet.frozen", "deposit.succeeded"]}).json()["data"]
    assert [e["type"] for e in only] == ["wallet.frozen", "deposit.succeeded"]
    about = api.get("/v1/events", {"object_id": str(wallet.id)}).json()["data"]
    assert [e["seq"] for e in about] == [3, 2, 1]
    bad = api.get("/v1/events", {"type": "transfer.exploded"})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "type")


def test_a_change_rolled_back_leaves_no_event() -> None:
    owner, _ = make_client()
    wallet = make_wallet(owner, shard="shard_00")

    def deposit_then_die() -> None:
        with transaction.atomic(using="shard_00"):
            wallet_fund(wallet_id=wallet.id, amount_minor=500, reference="dep-rolled-back")
            raise RuntimeError("the transaction dies after the deposit")

    with pytest.raises(RuntimeError):
        deposit_then_die()
    assert Event.objects.using("shard_00").filter(client_id=owner.id).exclude(type="wallet.created").count() == 0


def test_a_cross_shard_transfer_has_its_debit_and_its_completion_in_order(settings) -> None:
    owner, key = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    created = api_for(key).post(
        "/v1/transfers", {"from": str(payer.id), "to": str(payee.id), "amount_minor": 300, "currency": "USD"},
        format="json", HTTP_IDEMPOTENCY_KEY="x-1",
    )  # fmt: skip
    transfer_id = uuid.UUID(created.json()["id"])
    saga.transfer_advance(transfer_id)
    transfer = Transfer.objects.using("shard_00").get(id=transfer_id)
    assert transfer.status == "completed"
    events = events_of(transfer_id)
    assert [(e.type, e.seq) for e in events] == [("transfer.debited", 1), ("transfer.completed", 2)]
    assert data(events[-1]) == transfer_out(transfer)
    assert data(events[0])["status"] == "debited"


def test_hold_events_render_the_hold() -> None:
    owner, key = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_00")
    api = api_for(key)
    body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": 400, "currency": "USD"}
    hold = api.post("/v1/holds", body, format="json", HTTP_IDEMPOTENCY_KEY="h-1").json()
    voided = api.post(f"/v1/holds/{hold['id']}/void", {}, format="json").json()
    events = events_of(uuid.UUID(hold["id"]))
    assert [(e.type, e.seq) for e in events] == [("hold.created", 1), ("hold.voided", 2)]
    assert data(events[0]) == hold
    assert data(events[1]) == voided
    from apps.holds.models import Hold

    assert data(events[1]) == hold_out(Hold.objects.using("shard_00").get(id=hold["id"]))
