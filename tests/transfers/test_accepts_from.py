"""A wallet set to `accepts_from: same_client` takes transfers from its owner only.

A stranger's transfer fails as `payee_not_found` before anything else about the wallet is
looked at (not frozen, not its currency, not its room under the limit), through each place
the credit is decided: the first step on one shard, the saga's one-statement credit and its
slow path, a drain's group credit, a batch. Refunds of what the wallet paid are always taken.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from apps.ledger.models import WalletStatus
from apps.ledger.services import WalletChanges, wallet_set_status, wallet_update
from apps.transfers.api.views import render_transfer
from apps.transfers.checks import check_ledger
from apps.transfers.creation import transfer_create
from apps.transfers.saga import drain_debited, transfer_advance
from tests.factories import (
    ALL_DATABASES,
    api_for,
    make_client,
    make_wallet,
    transfer_request,
    wallet_balance,
)

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)

SHARDS = pytest.mark.parametrize("payee_shard", ["shard_00", "shard_01"], ids=["same_shard", "cross_shard"])


def _restricted(owner: Any, *, shard: str, **settings: Any) -> Any:
    wallet = make_wallet(owner, shard=shard, **settings)
    wallet_update(wallet_id=wallet.id, owner_id=owner.id, changes=WalletChanges(accepts_from="same_client"))
    return wallet


def _pay(api: Any, payer: Any, payee_id: Any, amount: int, key: str) -> dict:
    body = {"from": str(payer.id), "to": str(payee_id), "amount_minor": amount, "currency": "USD"}
    created = api.post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert created.status_code in (201, 202), created.content
    transfer_advance(uuid.UUID(created.json()["id"]))  # no worker here
    return api.get(f"/v1/transfers/{created.json()['id']}").json()


@SHARDS
def test_a_strangers_transfer_is_refused_as_not_found_and_the_owners_is_taken(payee_shard: str) -> None:
    owner, owner_key = make_client("merchant")
    stranger, stranger_key = make_client("stranger")
    payee = _restricted(owner, shard=payee_shard)
    strangers_wallet = make_wallet(stranger, funded=1_000, shard="shard_00")
    owners_wallet = make_wallet(owner, funded=1_000, shard="shard_00")

    refused = _pay(api_for(stranger_key), strangers_wallet, payee.id, 300, "from-a-stranger")
    assert (refused["status"], refused["failure_reason"]) == ("failed", "payee_not_found")
    taken = _pay(api_for(owner_key), owners_wallet, payee.id, 200, "from-the-owner")
    assert (taken["status"], taken["failure_reason"]) == ("completed", None)
    assert (wallet_balance(strangers_wallet.id), wallet_balance(payee.id)) == (1_000, 200)

    # Opened to everyone, the same stranger's transfer goes through.
    wallet_update(wallet_id=payee.id, owner_id=owner.id, changes=WalletChanges(accepts_from="any"))
    opened = _pay(api_for(stranger_key), strangers_wallet, payee.id, 300, "after-opening")
    assert opened["status"] == "completed"
    assert (wallet_balance(strangers_wallet.id), wallet_balance(payee.id)) == (700, 500)
    assert check_ledger().ok


@SHARDS
def test_a_stranger_cannot_learn_that_the_wallet_is_frozen_or_in_another_currency(payee_shard: str) -> None:
    owner, owner_key = make_client("merchant")
    stranger, stranger_key = make_client("stranger")
    frozen = _restricted(owner, shard=payee_shard)
    wallet_set_status(wallet_id=frozen.id, status=WalletStatus.FROZEN)
    euros = _restricted(owner, shard=payee_shard, currency="EUR")
    strangers_wallet = make_wallet(stranger, funded=1_000, shard="shard_00")
    owners_wallet = make_wallet(owner, funded=1_000, shard="shard_00")

    for payee in (frozen, euros):
        probe = _pay(api_for(stranger_key), strangers_wallet, payee.id, 1, f"probe-{payee.id}")
        assert probe["failure_reason"] == "payee_not_found"
    own = _pay(api_for(owner_key), owners_wallet, frozen.id, 1, "own-to-frozen")
    assert own["failure_reason"] == "payee_frozen"
    own = _pay(api_for(owner_key), owners_wallet, euros.id, 1, "own-to-euros")
    assert own["failure_reason"] == "payee_currency_mismatch"
    assert wallet_balance(strangers_wallet.id) == 1_000


def test_a_drain_credits_in_one_group_only_what_each_payee_takes() -> None:
    owner, _ = make_client("merchant")
    stranger, _ = make_client("stranger")
    restricted = _restricted(owner, shard="shard_01")
    open_payee = make_wallet(owner, shard="shard_01")
    payer = make_wallet(stranger, funded=1_000, shard="shard_00")
    refused, taken = (
        transfer_create(transfer_request(stranger, payer, payee_id, 100), render=render_transfer, drain=False).transfer
        for payee_id in (restricted.id, open_payee.id)
    )
    assert (refused.status, taken.status) == ("debited", "debited")

    result = drain_debited("shard_00")
    assert (result.completed, result.left_over) == (1, [refused.id])
    assert (wallet_balance(restricted.id), wallet_balance(open_payee.id)) == (0, 100)
    failed = transfer_advance(refused.id)  # the one-by-one run records why and refunds the payer
    assert (failed.status, failed.failure_reason) == ("failed", "payee_not_found")
    assert wallet_balance(payer.id) == 900
    assert check_ledger().ok


def test_a_batch_item_to_a_restricted_wallet_fails_alone() -> None:
    owner, _ = make_client("merchant")
    stranger, stranger_key = make_client("stranger")
    restricted = _restricted(owner, shard="shard_00")
    open_payee = make_wallet(owner, shard="shard_00")
    payer = make_wallet(stranger, funded=1_000, shard="shard_00")
    items = [
        {"from": str(payer.id), "to": str(to), "amount_minor": 100, "currency": "USD", "idempotency_key": f"item-{i}"}
        for i, to in enumerate((restricted.id, open_payee.id))
    ]
    answer = api_for(stranger_key).post("/v1/transfers/batch", {"transfers": items}, format="json")
    assert answer.status_code == 200, answer.content
    results = [r["transfer"] for r in answer.json()["results"]]
    assert [(r["status"], r["failure_reason"]) for r in results] == [
        ("failed", "payee_not_found"),
        ("completed", None),
    ]
    assert (wallet_balance(payer.id), wallet_balance(restricted.id), wallet_balance(open_payee.id)) == (900, 0, 100)


@SHARDS
def test_a_refund_reaches_a_restricted_wallet_that_paid(payee_shard: str) -> None:
    """The refund's client is the paid wallet's owner, a stranger to the wallet it pays back."""
    buyer, buyer_key = make_client("buyer")
    merchant, merchant_key = make_client("merchant")
    buyers_wallet = _restricted(buyer, shard="shard_00", funded=1_000)
    shop = make_wallet(merchant, shard=payee_shard)
    paid = _pay(api_for(buyer_key), buyers_wallet, shop.id, 300, "purchase")
    assert paid["status"] == "completed"

    answer = api_for(merchant_key).post(
        f"/v1/transfers/{paid['id']}/refunds", {"amount_minor": 120}, format="json", HTTP_IDEMPOTENCY_KEY="give-back"
    )
    assert answer.status_code in (201, 202), answer.content
    refund = transfer_advance(uuid.UUID(answer.json()["id"]))
    assert (refund.status, refund.client_id) == ("completed", merchant.id)
    assert (wallet_balance(buyers_wallet.id), wallet_balance(shop.id)) == (820, 180)
    assert check_ledger().ok


def test_the_setting_through_the_api() -> None:
    _, key = make_client("merchant")
    _, other_key = make_client("stranger")
    api = api_for(key)
    created = api.post("/v1/wallets", {"currency": "USD"}, format="json")
    assert (created.status_code, created.json()["accepts_from"]) == (201, "any")
    restricted = api.post("/v1/wallets", {"currency": "USD", "accepts_from": "same_client"}, format="json")
    assert restricted.json()["accepts_from"] == "same_client"
    url = f"/v1/wallets/{created.json()['id']}"
    for bad in ("anyone", "", None, 1, ["any"]):
        refused = api.patch(url, {"accepts_from": bad}, format="json")
        assert (refused.status_code, refused.json()["error"]["param"]) == (400, "accepts_from"), bad
    refused = api.post("/v1/wallets", {"currency": "USD", "accepts_from": "nobody"}, format="json")
    assert (refused.status_code, refused.json()["error"]) == (
        400,
        {"code": "parameter_invalid", "message": '"nobody" is not one of: any, same_client.', "param": "accepts_from"},
    )
    assert api_for(other_key).patch(url, {"accepts_from": "same_client"}, format="json").status_code == 404
    changed = api.patch(url, {"accepts_from": "same_client"}, format="json")
    assert (changed.status_code, changed.json()["accepts_from"]) == (200, "same_client")
    assert api.get(url).json()["accepts_from"] == "same_client"
