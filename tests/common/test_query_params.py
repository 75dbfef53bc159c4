"""Query parameters take plain ASCII numbers only: anything else is a clear 400, never a 500."""

import pytest

from tests.factories import ALL_DATABASES, make_wallet
from tests.ledger.test_api import error_of

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


@pytest.mark.parametrize("limit", ["²", "\u0661\u0660", "0", "101", "-1", " 5", "5.0", ""])
def test_a_limit_that_is_not_a_plain_number_from_1_to_100_is_400(api, client_and_key, limit) -> None:
    wallet = make_wallet(client_and_key[0])
    for path in ("/v1/wallets", f"/v1/wallets/{wallet.id}/entries", f"/v1/wallets/{wallet.id}/transfers"):
        assert error_of(api.get(path, {"limit": limit})) == (400, "invalid_request", "limit")


@pytest.mark.parametrize("wait", ["\u0661", " 5 ", "1_0", "nan", "inf", "31", "-1", "4e1", "0x1"])
def test_a_wait_that_is_not_a_plain_number_from_0_to_30_is_400_and_creates_nothing(api, client_and_key, wait) -> None:
    payer = make_wallet(client_and_key[0], funded=100)
    payee = make_wallet(client_and_key[0])
    body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": 10, "currency": "USD"}
    response = api.post(f"/v1/transfers?wait={wait}", body, format="json", HTTP_IDEMPOTENCY_KEY="w")
    assert error_of(response) == (400, "invalid_request", "wait")
    assert api.get(f"/v1/wallets/{payer.id}/transfers").json()["data"] == []
