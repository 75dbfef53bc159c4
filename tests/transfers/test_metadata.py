"""`description` and `metadata` on transfers and wallets: kept as given, returned everywhere
(single and batch answers, reads, lists, events), part of a key's fingerprint, refused
clearly beyond Stripe's limits with nothing written."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from apps.events.models import Event
from apps.ledger.models import Wallet
from apps.sharding.routing import alias_for_id, shard_map
from apps.transfers.models import Transfer
from tests.factories import ALL_DATABASES, api_for, balance_and_entry_count, make_client, make_wallet
from tests.workers import Worker, wait_terminal

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)

NOTES = {"order_id": "A-1042", "clé": '€ 12,50 — "quoted"', "empty": ""}


def _body(payer: Wallet, payee: Wallet, **extra: Any) -> dict[str, Any]:
    return {"from": str(payer.id), "to": str(payee.id), "amount_minor": 300, "currency": "USD", **extra}


def _event_data(raw_id: str) -> dict[str, Any]:
    object_id = uuid.UUID(raw_id)
    [event] = Event.objects.using(alias_for_id(object_id)).filter(object_id=object_id).order_by("-seq")[:1]
    return dict(json.loads(event.data))


def test_a_transfers_notes_are_returned_by_every_answer_read_list_and_event(workers: list[Worker]) -> None:
    workers.append(Worker())
    client, key = make_client()
    payer = make_wallet(client, funded=1_000, shard="shard_00")
    payee = make_wallet(client, shard="shard_01")  # cross-shard: the saga reads and writes it again
    api = api_for(key)
    created = api.post(
        "/v1/transfers", _body(payer, payee, description="Rent, May", metadata=NOTES), format="json",
        HTTP_IDEMPOTENCY_KEY="rent-may",
    )  # fmt: skip
    assert created.status_code in (201, 202), created.content
    transfer_id = uuid.UUID(created.json()["id"])
    assert (created.json()["description"], created.json()["metadata"]) == ("Rent, May", NOTES)
    stored = Transfer.objects.using(alias_for_id(transfer_id)).get(id=transfer_id)
    assert (stored.description, stored.metadata) == ("Rent, May", NOTES)

    wait_terminal([transfer_id])
    detail = api.get(f"/v1/transfers/{transfer_id}").json()
    assert (detail["status"], detail["description"], detail["metadata"]) == ("completed", "Rent, May", NOTES)
    [listed] = api.get(f"/v1/wallets/{payer.id}/transfers").json()["data"]
    assert (listed["description"], listed["metadata"]) == ("Rent, May", NOTES)
    event = _event_data(str(transfer_id))
    assert (event["status"], event["description"], event["metadata"]) == ("completed", "Rent, May", NOTES)

    # Without them: null and {} everywhere, never absent.
    plain = api.post("/v1/transfers", _body(payer, payee), format="json", HTTP_IDEMPOTENCY_KEY="plain").json()
    assert (plain["description"], plain["metadata"]) == (None, {})
    assert (_event_data(plain["id"])["description"], _event_data(plain["id"])["metadata"]) == (None, {})


def test_notes_are_part_of_a_keys_request_and_of_a_batch_item() -> None:
    client, key = make_client()
    payer = make_wallet(client, funded=1_000, shard="shard_00")
    payee = make_wallet(client, shard="shard_00")
    api = api_for(key)
    first = api.post("/v1/transfers", _body(payer, payee, metadata={"a": "1"}), format="json",
                     HTTP_IDEMPOTENCY_KEY="k")  # fmt: skip
    assert first.status_code == 201, first.content
    again = api.post("/v1/transfers", _body(payer, payee, metadata={"a": "1"}), format="json",
                     HTTP_IDEMPOTENCY_KEY="k")  # fmt: skip
    assert (again.status_code, again.content) == (201, first.content)
    for changed in ({"metadata": {"a": "2"}}, {"description": "other"}, {}):
        reused = api.post("/v1/transfers", _body(payer, payee, **changed), format="json", HTTP_IDEMPOTENCY_KEY="k")
        assert (reused.status_code, reused.json()["error"]["code"]) == (422, "idempotency_key_reused"), changed
    # An empty metadata is no metadata: the same request as one without it.
    api.post("/v1/transfers", _body(payer, payee), format="json", HTTP_IDEMPOTENCY_KEY="bare")
    same = api.post("/v1/transfers", _body(payer, payee, metadata={}), format="json", HTTP_IDEMPOTENCY_KEY="bare")
    assert (same.status_code, same["Idempotent-Replayed"]) == (201, "true")

    batch = api.post(
        "/v1/transfers/batch",
        {"transfers": [
            {**_body(payer, payee, description="item", metadata={"line": "1"}), "idempotency_key": "b-1"},
            {**_body(payer, payee, metadata={"line": 2}), "idempotency_key": "b-2"},
        ]},
        format="json",
    )  # fmt: skip
    assert batch.status_code == 200, batch.content
    ok, refused = batch.json()["results"]
    assert (ok["transfer"]["description"], ok["transfer"]["metadata"]) == ("item", {"line": "1"})
    assert (refused["outcome"], refused["error"]["code"], refused["error"]["param"]) == (
        "rejected", "parameter_invalid", "metadata",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"),
        ({"metadata": {"k" * 41: "v"}}, "metadata"),
        ({"metadata": {"": "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 501}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"metadata": {"k": None}}, "metadata"),
        ({"metadata": {"k": "nul\x00"}}, "metadata"),
        ({"metadata": ["k", "v"]}, "metadata"),
        ({"metadata": "k=v"}, "metadata"),
        ({"description": 5}, "description"),
        ({"description": "d" * 1001}, "description"),
        ({"description": "nul\x00"}, "description"),
    ],
)
def test_notes_beyond_the_limits_are_refused_and_nothing_moves(extra: dict[str, Any], param: str) -> None:
    client, key = make_client()
    payer = make_wallet(client, funded=1_000, shard="shard_00")
    payee = make_wallet(client, shard="shard_00")
    refused = api_for(key).post("/v1/transfers", _body(payer, payee, **extra), format="json",
                                HTTP_IDEMPOTENCY_KEY="x")  # fmt: skip
    assert refused.status_code == 400, refused.content
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == ("parameter_invalid", param)
    assert balance_and_entry_count(payer.id, "shard_00") == (1_000, 1)
    assert not Transfer.objects.using("shard_00").filter(payer_id=payer.id).exists()
    wallet = api_for(key).post("/v1/wallets", {"currency": "USD", **extra}, format="json")
    assert (wallet.status_code, wallet.json()["error"]["param"]) == (400, param)
    made = sum(Wallet.objects.using(alias).filter(owner_id=client.id).count() for alias in shard_map().aliases)
    assert made == 2  # the factory's two


def test_a_wallets_notes_are_set_at_creation_merged_by_patch_and_carried_by_its_events() -> None:
    _, key = make_client()
    api = api_for(key)
    created = api.post("/v1/wallets", {"currency": "USD", "description": "Float", "metadata": NOTES}, format="json")
    assert created.status_code == 201, created.content
    wallet_id = uuid.UUID(created.json()["id"])
    assert (created.json()["description"], created.json()["metadata"]) == ("Float", NOTES)
    assert (_event_data(str(wallet_id))["description"], _event_data(str(wallet_id))["metadata"]) == ("Float", NOTES)
    assert api.get(f"/v1/wallets/{wallet_id}").json()["metadata"] == NOTES
    [listed] = api.get("/v1/wallets").json()["data"]
    assert listed["description"] == "Float"

    # Merged: keys given are set, a key given as "" is removed; the rest is kept.
    patched = api.patch(f"/v1/wallets/{wallet_id}", {"metadata": {"order_id": "", "tier": "gold"}}, format="json")
    assert patched.status_code == 200, patched.content
    assert patched.json()["metadata"] == {"clé": NOTES["clé"], "tier": "gold"}  # "empty" was "" already: removed
    assert patched.json()["description"] == "Float"
    cleared = api.patch(f"/v1/wallets/{wallet_id}", {"description": None}, format="json").json()
    assert (cleared["description"], cleared["metadata"]) == (None, {"clé": NOTES["clé"], "tier": "gold"})
    stored = Wallet.objects.using(alias_for_id(wallet_id)).get(id=wallet_id)
    assert (stored.description, stored.metadata) == (None, {"clé": NOTES["clé"], "tier": "gold"})

    # A merge beyond 50 keys is refused whole.
    too_many = api.patch(f"/v1/wallets/{wallet_id}", {"metadata": {f"k{i}": "v" for i in range(49)}}, format="json")
    assert (too_many.status_code, too_many.json()["error"]["param"]) == (400, "metadata")
    stored.refresh_from_db(using=alias_for_id(wallet_id))
    assert stored.metadata == {"clé": NOTES["clé"], "tier": "gold"}
    # A wallet of another client is not found, whatever the body.
    _, other_key = make_client("other")
    assert api_for(other_key).patch(f"/v1/wallets/{wallet_id}", {"description": "x"}, format="json").status_code == 404
