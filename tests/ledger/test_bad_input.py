"""POST /v1/wallets/{id}/withdrawals with bad input: a clear 4xx with a stable code, and no row changes.

The wallet is funded, so an amount that slipped through validation (5.0 read as 5, "5" as 5,
true as 1) would really move money; every refusal is checked against a snapshot of every
money row on every shard.
"""

from __future__ import annotations

from typing import Any

import pytest

from apps.sharding.routing import shard_aliases
from tests.factories import ALL_DATABASES, make_wallet, raw_query
from tests.ledger.test_api import error_of

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)

FUNDED = 10_000

# Every row money lives in, on every shard, with the columns a movement would change.
_MONEY_ROWS = {
    "ledger_wallet": "SELECT id, balance_minor, last_entry_seq, status, updated_at FROM ledger_wallet ORDER BY id",
    "ledger_entry": "SELECT id, wallet_id, seq, amount_minor FROM ledger_entry ORDER BY id",
    "ledger_movement_key": "SELECT id, wallet_id, key, response_status FROM ledger_movement_key ORDER BY id",
    "transfers_transfer": "SELECT id, status, amount_minor, updated_at FROM transfers_transfer ORDER BY id",
    "transfers_idempotency": "SELECT id, key, response_status FROM transfers_idempotency ORDER BY id",
    "transfers_payee_credit": "SELECT transfer_id, outcome FROM transfers_payee_credit ORDER BY transfer_id",
}


def money_rows() -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """Balances, ledger entries, transfers and the idempotency keys of both, per shard and table."""
    return {(alias, table): raw_query(alias, sql) for alias in shard_aliases() for table, sql in _MONEY_ROWS.items()}


def withdraw(api: Any, wallet_id: Any, body: Any, key: str | None = "wd-1", raw: bool = False) -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    url = f"/v1/wallets/{wallet_id}/withdrawals"
    if raw:  # exactly these bytes, as a client might send them
        return api.post(url, body, content_type="application/json", **headers)
    return api.post(url, body, format="json", **headers)


@pytest.fixture
def funded_wallet(client_and_key: tuple[Any, str]) -> Any:
    return make_wallet(client_and_key[0], funded=FUNDED)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, (400, "parameter_missing", "amount_minor")),
        ({"amount": 500}, (400, "parameter_missing", "amount_minor")),
        ({"amount_minor": None}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": "500"}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": ""}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 5.0}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 5.5}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 1e3}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": True}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": False}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 0}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": -500}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 2**63}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 10**30}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": -(10**30)}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": [500]}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": {"value": 500}}, (400, "invalid_amount", "amount_minor")),
        ([{"amount_minor": 500}], (400, "parameter_invalid", None)),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_a_bad_withdrawal_body_gets_a_clear_400_and_changes_nothing(api, funded_wallet, body, expected) -> None:
    before = money_rows()
    assert error_of(withdraw(api, funded_wallet.id, body)) == expected
    assert money_rows() == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{amount_minor: 500}", (400, "invalid_json")),
        ('{"amount_minor": 500', (400, "invalid_json")),
        ('{"amount_minor": NaN}', (400, "invalid_json")),
        ('{"amount_minor": Infinity}', (400, "invalid_json")),
        ('{"amount_minor": 5.0}', (400, "invalid_amount")),
        ('{"amount_minor": 5e0}', (400, "invalid_amount")),
        ('{"amount_minor": 1000000000000000000000000000000}', (400, "invalid_amount")),
        ('{"amount_minor": 1' + "0" * 5_000 + "}", (400, "invalid_json")),  # past Python's int-parsing limit
        ('{"amount_minor": ' + "[" * 100_000 + "]" * 100_000 + "}", (400, "invalid_json")),  # past the parser's depth
        ("[" * 100_000 + "]" * 100_000, (400, "invalid_json")),
        (b'{"amount_minor": "\xff"}', (400, "invalid_json")),  # not UTF-8
        ('"500"', (400, "parameter_invalid")),
        ("null", (400, "parameter_invalid")),
        ("", (400, "parameter_missing")),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_a_malformed_withdrawal_text_gets_a_clear_400_and_changes_nothing(api, funded_wallet, text, expected) -> None:
    before = money_rows()
    assert error_of(withdraw(api, funded_wallet.id, text, raw=True))[:2] == expected
    assert money_rows() == before


def test_a_withdrawal_sent_as_a_form_is_415_and_changes_nothing(api, funded_wallet) -> None:
    before = money_rows()
    response = api.post(
        f"/v1/wallets/{funded_wallet.id}/withdrawals",
        "amount_minor=500",
        content_type="application/x-www-form-urlencoded",
        HTTP_IDEMPOTENCY_KEY="wd-1",
    )
    assert error_of(response)[:2] == (415, "unsupported_media_type")
    assert money_rows() == before


@pytest.mark.parametrize(
    ("key", "code"),
    [
        (None, "idempotency_key_missing"),
        ("", "idempotency_key_invalid"),
        ("x" * 256, "idempotency_key_invalid"),
        ("tab\there", "idempotency_key_invalid"),
        ("clé", "idempotency_key_invalid"),
    ],
    ids=["missing", "empty", "256-chars", "control-char", "non-ascii"],
)
def test_a_withdrawal_without_a_valid_idempotency_key_is_400_and_changes_nothing(api, funded_wallet, key, code) -> None:
    before = money_rows()
    assert error_of(withdraw(api, funded_wallet.id, {"amount_minor": 500}, key=key)) == (400, code, "Idempotency-Key")
    assert money_rows() == before


def test_the_same_valid_withdrawal_goes_through(api, funded_wallet) -> None:
    # The control for the refusals above: this wallet, this key, a good body does move money.
    before = money_rows()
    response = withdraw(api, funded_wallet.id, {"amount_minor": 500})
    assert response.status_code == 201
    assert response.json()["balance_after_minor"] == FUNDED - 500
    assert money_rows() != before
