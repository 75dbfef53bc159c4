"""A deposit or withdrawal key is scoped to its wallet: two API clients sending the same
Idempotency-Key make two independent requests."""

from __future__ import annotations

import pytest

from tests.factories import ALL_DATABASES, api_for, entry_kinds, make_client, make_wallet
from tests.factories import wallet_balance as balance

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


@pytest.mark.parametrize(
    "shards", [("shard_00", "shard_00"), ("shard_00", "shard_01")], ids=["same-shard", "two-shards"]
)
def test_the_same_key_from_two_clients_makes_two_deposits_and_two_withdrawals(shards) -> None:
    clients = [make_client(name) for name in ("acme", "globex")]
    wallets = [make_wallet(owner, shard=shard) for (owner, _), shard in zip(clients, shards, strict=True)]
    responses = []
    for (_, key), wallet in zip(clients, wallets, strict=True):
        api = api_for(key)
        url = f"/v1/wallets/{wallet.id}"
        # The same deposit key for both clients, and the same withdrawal key (a key is one request on
        # its wallet: a deposit's key reused for a withdrawal would be idempotency_key_reused).
        responses.append(api.post(f"{url}/deposits", {"amount_minor": 700}, format="json", HTTP_IDEMPOTENCY_KEY="d"))
        responses.append(api.post(f"{url}/withdrawals", {"amount_minor": 200}, format="json", HTTP_IDEMPOTENCY_KEY="w"))
    assert [r.status_code for r in responses] == [201] * 4
    assert not any("Idempotent-Replayed" in r.headers for r in responses)
    assert len({r.json()["id"] for r in responses}) == 4
    for wallet in wallets:
        assert entry_kinds(wallet.id) == ["deposit", "withdrawal"]
        assert balance(wallet.id) == 500
