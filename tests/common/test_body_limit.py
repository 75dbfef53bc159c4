"""A body over SHARDWALLET_API_MAX_BODY_BYTES is 413 before it is read; nothing changes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apps.ledger.models import Wallet
from tests.contract.schema import CheckedAPIClient
from tests.factories import ALL_DATABASES, make_client, make_wallet

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


@pytest.fixture
def api() -> tuple[Any, CheckedAPIClient]:
    client, key = make_client()
    api = CheckedAPIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client, api


def wallet_count() -> int:
    return sum(Wallet.objects.using(alias).count() for alias in ("shard_00", "shard_01"))


def test_a_body_over_the_limit_is_413_and_creates_nothing(api: tuple[Any, CheckedAPIClient], settings: Any) -> None:
    settings.API_MAX_BODY_BYTES = 1000
    _, client = api
    big = {"currency": "USD", "description": "x" * 990}
    before = wallet_count()
    response = client.post("/v1/wallets", json.dumps(big), content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert wallet_count() == before
    small = {"currency": "USD", "description": "x" * 100}
    assert client.post("/v1/wallets", json.dumps(small), content_type="application/json").status_code == 201


def test_a_batch_over_the_limit_is_413(api: tuple[Any, CheckedAPIClient], settings: Any) -> None:
    settings.API_MAX_BODY_BYTES = 2000
    owner, client = api
    payer, payee = make_wallet(owner, funded=100), make_wallet(owner)
    item = {"from": str(payer.id), "to": str(payee.id), "amount_minor": 1, "currency": "USD"}
    items = [{**item, "idempotency_key": f"k{i}"} for i in range(30)]
    response = client.post("/v1/transfers/batch", {"transfers": items}, format="json")
    assert response.status_code == 413
    payer.refresh_from_db()
    assert payer.balance_minor == 100


def test_a_malformed_content_length_is_refused(api: tuple[Any, CheckedAPIClient]) -> None:
    _, client = api
    response = client.generic("POST", "/v1/wallets", b"{}", content_type="application/json", CONTENT_LENGTH="-5")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Content-Length"
