"""POST /v1/transfers/batch with bad input: each bad item is rejected with the single endpoint's
code, a malformed batch is refused whole, and neither changes a row on any shard."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.factories import ALL_DATABASES, api_for, make_client, make_wallet
from tests.ledger.test_api import error_of
from tests.ledger.test_bad_input import money_rows

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)

URL = "/v1/transfers/batch"


@pytest.fixture
def wallets() -> tuple[Any, Any, Any]:
    owner, key = make_client()
    # Funded, and a cross-shard payee: an item that slipped through would really debit the payer.
    return api_for(key), make_wallet(owner, funded=10_000, shard="shard_00"), make_wallet(owner, shard="shard_01")


def good_item(payer: Any, payee: Any, **change: Any) -> dict[str, Any]:
    item = {"idempotency_key": f"k-{uuid.uuid4()}", "from": str(payer.id), "to": str(payee.id),
            "amount_minor": 500, "currency": "USD"}  # fmt: skip
    for field in change.pop("drop", ()):
        del item[field]
    return {**item, **change}


AMOUNT = ("invalid_amount", "amount_minor")

# (what is wrong with the item, as a change to a good one, or the whole item) -> (code, param)
BAD_ITEMS: list[tuple[dict[str, Any] | Any, tuple[str, str | None]]] = [
    ({"amount_minor": 5.0}, AMOUNT),
    ({"amount_minor": 5.5}, AMOUNT),
    ({"amount_minor": "500"}, AMOUNT),
    ({"amount_minor": True}, AMOUNT),
    ({"amount_minor": False}, AMOUNT),
    ({"amount_minor": None}, AMOUNT),
    ({"amount_minor": 0}, AMOUNT),
    ({"amount_minor": -500}, AMOUNT),
    ({"amount_minor": 2**63}, AMOUNT),
    ({"amount_minor": 10**30}, AMOUNT),
    ({"amount_minor": [500]}, AMOUNT),
    ({"drop": ["amount_minor"]}, ("parameter_missing", "amount_minor")),
    ({"drop": ["currency"]}, ("parameter_missing", "currency")),
    ({"drop": ["from"]}, ("parameter_missing", "from")),
    ({"drop": ["to"]}, ("parameter_missing", "to")),
    ({"drop": ["idempotency_key"]}, ("idempotency_key_missing", "idempotency_key")),
    ({"idempotency_key": None}, ("idempotency_key_invalid", "idempotency_key")),
    ({"idempotency_key": 12}, ("idempotency_key_invalid", "idempotency_key")),
    ({"idempotency_key": ""}, ("idempotency_key_invalid", "idempotency_key")),
    ({"idempotency_key": "x" * 256}, ("idempotency_key_invalid", "idempotency_key")),
    ({"idempotency_key": "clé"}, ("idempotency_key_invalid", "idempotency_key")),
    ({"currency": None}, ("unsupported_currency", "currency")),
    ({"currency": "usd"}, ("unsupported_currency", "currency")),
    ({"from": None}, ("parameter_invalid", "from")),
    ({"to": 12}, ("parameter_invalid", "to")),
    ("not an object", ("parameter_invalid", None)),
    (None, ("parameter_invalid", None)),
    ([500], ("parameter_invalid", None)),
]


def test_every_bad_item_is_rejected_with_a_stable_code_and_nothing_changes(wallets) -> None:
    api, payer, payee = wallets
    items = [good_item(payer, payee, **bad) if isinstance(bad, dict) else bad for bad, _ in BAD_ITEMS]
    before = money_rows()
    response = api.post(URL, {"transfers": items}, format="json")
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["index"], r["outcome"], r["status"]) for r in results] == [
        (i, "rejected", 400) for i in range(len(BAD_ITEMS))
    ]
    assert [(r["error"]["code"], r["error"]["param"]) for r in results] == [expected for _, expected in BAD_ITEMS]
    assert all(r["error"]["message"] and r["transfer"] is None for r in results)
    assert money_rows() == before


def test_a_bad_item_beside_a_good_one_only_sinks_itself(wallets) -> None:
    # The control for the test above: the same batch with one good item does move money.
    api, payer, payee = wallets
    response = api.post(URL, {"transfers": [good_item(payer, payee, amount_minor=5.0), good_item(payer, payee)]},
                        format="json")  # fmt: skip
    assert [(r["outcome"], r["status"]) for r in response.json()["results"]] == [("rejected", 400), ("accepted", 202)]
    [(balance,)] = [row[1:2] for row in money_rows()[("shard_00", "ledger_wallet")] if row[0] == payer.id]
    assert balance == 10_000 - 500


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"transfers": None},
        {"transfers": []},
        {"transfers": "x"},
        {"transfers": {"0": {}}},
        {"transfer": []},
        [],
        "transfers",
        None,
        {"transfers": [{}] * 1_001},
    ],
    ids=lambda v: repr(v)[:30],
)
def test_a_malformed_batch_body_is_400_invalid_request_and_changes_nothing(wallets, body) -> None:
    api, _, _ = wallets
    before = money_rows()
    assert error_of(api.post(URL, body, format="json")) == (400, "invalid_request", "transfers")
    assert money_rows() == before


@pytest.mark.parametrize(
    ("text", "content_type", "expected"),
    [
        ('{"transfers": [', "application/json", (400, "invalid_json")),
        ("{transfers: []}", "application/json", (400, "invalid_json")),
        ('{"transfers": [{"amount_minor": NaN}]}', "application/json", (400, "invalid_json")),
        ('{"transfers": ' + "[" * 100_000 + "]" * 100_000 + "}", "application/json", (400, "invalid_json")),
        ("transfers=1", "application/x-www-form-urlencoded", (415, "unsupported_media_type")),
    ],
    ids=["truncated", "unquoted", "nan", "nested-too-deep", "form"],
)
def test_a_batch_that_is_not_json_is_refused_and_changes_nothing(wallets, text, content_type, expected) -> None:
    api, _, _ = wallets
    before = money_rows()
    assert error_of(api.post(URL, text, content_type=content_type))[:2] == expected
    assert money_rows() == before
