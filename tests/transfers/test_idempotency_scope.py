"""A transfer key is scoped to the API client (and its paying wallet): two clients sending the
same Idempotency-Key, to the single or the batch endpoint, make two independent transfers."""

from __future__ import annotations

import pytest

from apps.sharding.routing import shard_aliases
from tests.factories import ALL_DATABASES, api_for, make_client, make_wallet, raw_query
from tests.factories import wallet_balance as balance

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def transfers_count() -> int:
    return sum(raw_query(a, "SELECT count(*) FROM transfers_transfer")[0][0] for a in shard_aliases())


@pytest.fixture
def two_clients():
    """Two clients, each paying from a wallet on shard_00, both to one payee on shard_00 (so the
    transfers complete within the request, on the shard where both keys are stored)."""
    clients = [make_client(name) for name in ("acme", "globex")]
    payers = [make_wallet(owner, funded=1_000, shard="shard_00") for owner, _ in clients]
    payee = make_wallet(make_client("shop")[0], shard="shard_00")
    return [api_for(key) for _, key in clients], payers, payee


def test_the_same_key_from_two_clients_makes_two_transfers(two_clients) -> None:
    apis, payers, payee = two_clients
    responses = [
        api.post("/v1/transfers", {"from": str(payer.id), "to": str(payee.id), "amount_minor": 300, "currency": "USD"},
                 format="json", HTTP_IDEMPOTENCY_KEY="same-key")
        for api, payer in zip(apis, payers, strict=True)
    ]  # fmt: skip
    assert [r.status_code for r in responses] == [201, 201]
    assert [r.json()["status"] for r in responses] == ["completed", "completed"]
    assert not any("Idempotent-Replayed" in r.headers for r in responses)
    assert len({r.json()["id"] for r in responses}) == 2
    assert transfers_count() == 2
    assert [balance(p.id) for p in payers] == [700, 700]
    assert balance(payee.id) == 600


def test_the_same_batch_key_from_two_clients_makes_two_transfers(two_clients) -> None:
    apis, payers, payee = two_clients
    results = [
        api.post("/v1/transfers/batch", {"transfers": [{"idempotency_key": "same-key", "from": str(payer.id),
                 "to": str(payee.id), "amount_minor": 300, "currency": "USD"}]}, format="json").json()["results"][0]
        for api, payer in zip(apis, payers, strict=True)
    ]  # fmt: skip
    assert [(r["outcome"], r["status"]) for r in results] == [("accepted", 201)] * 2
    assert len({r["transfer"]["id"] for r in results}) == 2
    assert transfers_count() == 2
    assert [balance(p.id) for p in payers] == [700, 700]
    assert balance(payee.id) == 600
