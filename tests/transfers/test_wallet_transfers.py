"""GET /v1/wallets/{id}/transfers?direction=out|in|all: what a wallet paid, what it received
(as its credits say it: nothing more of another client's transfer), both merged by transfer id."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from apps.ledger.models import LedgerEntry, WalletStatus
from apps.ledger.services import wallet_set_status
from apps.transfers.models import Transfer
from tests.factories import ALL_DATABASES, api_for, make_client, make_wallet
from tests.workers import Worker, wait_terminal

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def _pay(key: str, payer: Any, payee: Any, amount: int, idem: str, **extra: Any) -> dict[str, Any]:
    body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": amount, "currency": "USD", **extra}
    answer = api_for(key).post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY=idem)
    assert answer.status_code in (201, 202), answer.content
    transfer_id = uuid.UUID(answer.json()["id"])
    assert wait_terminal([transfer_id])[transfer_id].status == "completed"
    return dict(answer.json())


def _walk(key: str, wallet: Any, direction: str | None, limit: int) -> list[dict[str, Any]]:
    """Every page of the list, following its cursors."""
    query = f"limit={limit}" + (f"&direction={direction}" if direction else "")
    items: list[dict[str, Any]] = []
    url: str | None = f"/v1/wallets/{wallet.id}/transfers?{query}"
    while url:
        answer = api_for(key).get(url)
        assert answer.status_code == 200, answer.content
        body = answer.json()
        items += body["data"]
        url = f"/v1/wallets/{wallet.id}/transfers?{query}&cursor={body['next_cursor']}" if body["has_more"] else None
    return items


def test_a_wallet_lists_what_it_paid_what_it_received_and_both_by_transfer_id(workers: list[Worker]) -> None:
    workers.append(Worker())
    shop, shop_key = make_client("shop")
    buyer, buyer_key = make_client("buyer")
    till = make_wallet(shop, funded=1_000, shard="shard_00")
    card = make_wallet(buyer, funded=1_000, shard="shard_01")  # cross-shard both ways
    same_shard = make_wallet(buyer, funded=1_000, shard="shard_00")

    bought = _pay(buyer_key, card, till, 300, "b-1", description="buyer's own note", metadata={"basket": "9"})
    change = _pay(shop_key, till, card, 20, "s-1")
    bought_again = _pay(buyer_key, same_shard, till, 50, "b-2")
    # A transfer the till refused (frozen): nothing was credited, so it did not receive it.
    wallet_set_status(wallet_id=till.id, status=WalletStatus.FROZEN)
    body = {"from": str(same_shard.id), "to": str(till.id), "amount_minor": 7, "currency": "USD"}
    refused = api_for(buyer_key).post("/v1/transfers?wait=5", body, format="json", HTTP_IDEMPOTENCY_KEY="b-3")
    assert refused.json()["status"] == "failed"
    wallet_set_status(wallet_id=till.id, status=WalletStatus.ACTIVE)

    received = _walk(shop_key, till, "in", limit=1)
    assert [r["id"] for r in received] == [bought_again["id"], bought["id"]]
    credit = LedgerEntry.objects.using("shard_00").get(wallet_id=till.id, kind="credit", reference=bought["id"])
    assert received[1] == {
        "id": bought["id"], "direction": "in", "amount_minor": 300, "currency": "USD", "status": "completed",
        "to": str(till.id), "entry_id": str(credit.id),
        "credited_at": credit.created_at.isoformat().replace("+00:00", "Z"),
    }  # fmt: skip  # no payer, no description or metadata: the buyer's, not the shop's

    paid = _walk(shop_key, till, "out", limit=1)
    assert [(p["id"], p["direction"], p["status"], p["from"]) for p in paid] == [
        (change["id"], "out", "completed", str(till.id))
    ]
    assert _walk(shop_key, till, None, limit=5) == paid  # out unless asked otherwise

    everything = _walk(shop_key, till, "all", limit=1)
    assert [(e["id"], e["direction"]) for e in everything] == sorted(
        [(bought["id"], "in"), (change["id"], "out"), (bought_again["id"], "in")], reverse=True
    )
    assert _walk(shop_key, till, "all", limit=100) == everything

    # The buyer's side of the same transfers: its own in full, the shop's change as a credit.
    card_all = _walk(buyer_key, card, "all", limit=2)
    assert [(e["id"], e["direction"]) for e in card_all] == sorted(
        [(bought["id"], "out"), (change["id"], "in")], reverse=True
    )
    mine = next(e for e in card_all if e["direction"] == "out")
    assert (mine["description"], mine["metadata"]) == ("buyer's own note", {"basket": "9"})
    assert Transfer.objects.using("shard_01").filter(payer_id=card.id).count() == 1


def test_a_bad_direction_or_another_clients_wallet_is_refused() -> None:
    owner, key = make_client()
    wallet = make_wallet(owner)
    bad = api_for(key).get(f"/v1/wallets/{wallet.id}/transfers?direction=sideways")
    assert (bad.status_code, bad.json()["error"]["code"], bad.json()["error"]["param"]) == (
        400, "invalid_request", "direction",
    )  # fmt: skip
    _, stranger = make_client("stranger")
    assert api_for(stranger).get(f"/v1/wallets/{wallet.id}/transfers?direction=in").status_code == 404
