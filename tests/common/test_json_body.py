"""Request bodies every JSON endpoint parses the same way: what is not JSON is 400 invalid_json."""

from __future__ import annotations

import pytest

from tests.factories import ALL_DATABASES, make_wallet
from tests.ledger.test_api import error_of
from tests.ledger.test_bad_input import money_rows

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)

NESTED_TOO_DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON, deeper than Python's decoder goes


@pytest.mark.parametrize("endpoint", ["wallets", "deposits", "withdrawals", "transfers", "batch"])
def test_a_body_nested_too_deep_is_invalid_json_not_a_server_error(api, client_and_key, endpoint) -> None:
    wallet = make_wallet(client_and_key[0], funded=1_000)
    url = {
        "wallets": "/v1/wallets",
        "deposits": f"/v1/wallets/{wallet.id}/deposits",
        "withdrawals": f"/v1/wallets/{wallet.id}/withdrawals",
        "transfers": "/v1/transfers",
        "batch": "/v1/transfers/batch",
    }[endpoint]
    before = money_rows()
    body = '{"amount_minor": ' + NESTED_TOO_DEEP + "}"
    response = api.post(url, body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="deep-1")
    assert error_of(response)[:2] == (400, "invalid_json")
    assert money_rows() == before
