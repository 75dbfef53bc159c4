import re
import uuid
from typing import Any

import pytest

from apps.ledger.models import WalletStatus
from apps.ledger.services import wallet_set_status
from apps.sharding.ids import new_id
from apps.sharding.routing import alias_for_id, shard_aliases
from tests.factories import ALL_DATABASES, api_for, balance_and_entry_count, make_client, make_wallet, raw_query

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def error_of(response: Any) -> tuple[int, str, str | None]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "param"}
    assert body["error"]["message"]
    return response.status_code, body["error"]["code"], body["error"]["param"]


def total_rows() -> int:
    return sum(
        raw_query(alias, "SELECT (SELECT count(*) FROM ledger_wallet) + (SELECT count(*) FROM ledger_entry)")[0][0]
        for alias in shard_aliases()
    )


def deposit(api: Any, wallet_id: Any, body: Any, key: str | None = "key-1", **extra: Any) -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return api.post(f"/v1/wallets/{wallet_id}/deposits", body, format="json", **headers, **extra)


def test_walkthrough_create_fund_withdraw_balance_entries(api) -> None:
    created = api.post("/v1/wallets", {"currency": "USD"}, format="json")
    assert created.status_code == 201
    wallet = created.json()
    assert (wallet["currency"], wallet["status"], wallet["balance_minor"]) == ("USD", "active", 0)

    funded = deposit(api, wallet["id"], {"amount_minor": 5000})
    assert funded.status_code == 201
    assert funded.json()["balance_after_minor"] == 5000
    withdrawn = api.post(
        f"/v1/wallets/{wallet['id']}/withdrawals", {"amount_minor": 1200}, format="json", HTTP_IDEMPOTENCY_KEY="wd-1"
    )
    assert withdrawn.status_code == 201
    assert withdrawn.json()["amount_minor"] == -1200

    balance = api.get(f"/v1/wallets/{wallet['id']}/balance").json()
    assert balance == {
        "wallet_id": wallet["id"],
        "currency": "USD",
        "posted": 3800,
        "pending_out": 0,
        "held": 0,
        "available": 3800,
    }
    assert api.get(f"/v1/wallets/{wallet['id']}").json()["balance_minor"] == 3800
    entries = api.get(f"/v1/wallets/{wallet['id']}/entries").json()
    assert [(e["kind"], e["amount_minor"], e["balance_after_minor"]) for e in entries["data"]] == [
        ("withdrawal", -1200, 3800),
        ("deposit", 5000, 5000),
    ]
    assert entries["has_more"] is False
    assert balance_and_entry_count(uuid.UUID(wallet["id"]), alias_for_id(uuid.UUID(wallet["id"]))) == (3800, 2)


def test_replayed_deposit_returns_the_same_body_marked_as_replay(api, client_and_key) -> None:
    wallet = make_wallet(client_and_key[0])
    first = deposit(api, wallet.id, {"amount_minor": 5000})
    again = deposit(api, wallet.id, {"amount_minor": 5000})
    assert again.status_code == first.status_code == 201
    assert again.json() == first.json()
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert balance_and_entry_count(wallet.id, alias_for_id(wallet.id)) == (5000, 1)


def test_same_key_different_amount_is_422_and_changes_nothing(api, client_and_key) -> None:
    wallet = make_wallet(client_and_key[0])
    deposit(api, wallet.id, {"amount_minor": 5000})
    assert error_of(deposit(api, wallet.id, {"amount_minor": 5001})) == (
        422,
        "idempotency_key_reused",
        "Idempotency-Key",
    )
    assert balance_and_entry_count(wallet.id, alias_for_id(wallet.id)) == (5000, 1)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, (400, "parameter_missing", "amount_minor")),
        ({"amount_minor": None}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": "5000"}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 50.0}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 50.5}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": True}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 0}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": -5}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 2**63}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 10**30}, (400, "invalid_amount", "amount_minor")),
        ([1, 2], (400, "parameter_invalid", None)),
    ],
)
def test_bad_deposit_bodies_get_a_clear_400_and_change_nothing(api, client_and_key, body, expected) -> None:
    wallet = make_wallet(client_and_key[0])
    before = total_rows()
    assert error_of(deposit(api, wallet.id, body)) == expected
    assert total_rows() == before
    assert balance_and_entry_count(wallet.id, alias_for_id(wallet.id)) == (0, 0)


def test_malformed_json_and_wrong_content_type_are_refused(api, client_and_key) -> None:
    wallet = make_wallet(client_and_key[0])
    url = f"/v1/wallets/{wallet.id}/deposits"
    bad_json = api.post(url, "{amount_minor: ", content_type="application/json", HTTP_IDEMPOTENCY_KEY="k")
    assert error_of(bad_json)[:2] == (400, "invalid_json")
    form = api.post(url, "amount_minor=5", content_type="application/x-www-form-urlencoded", HTTP_IDEMPOTENCY_KEY="k")
    assert error_of(form)[:2] == (415, "unsupported_media_type")
    assert balance_and_entry_count(wallet.id, alias_for_id(wallet.id)) == (0, 0)


@pytest.mark.parametrize(
    ("key", "code"),
    [(None, "idempotency_key_missing"), ("", "idempotency_key_invalid"), ("x" * 256, "idempotency_key_invalid")],
)
def test_missing_or_invalid_idempotency_key_is_400(api, client_and_key, key, code) -> None:
    wallet = make_wallet(client_and_key[0])
    assert error_of(deposit(api, wallet.id, {"amount_minor": 5}, key=key)) == (400, code, "Idempotency-Key")
    assert balance_and_entry_count(wallet.id, alias_for_id(wallet.id)) == (0, 0)


def test_withdrawal_beyond_balance_is_422_and_changes_nothing(api, client_and_key) -> None:
    wallet = make_wallet(client_and_key[0], funded=100)
    response = api.post(
        f"/v1/wallets/{wallet.id}/withdrawals", {"amount_minor": 101}, format="json", HTTP_IDEMPOTENCY_KEY="w"
    )
    assert error_of(response) == (422, "insufficient_funds", "amount_minor")
    assert balance_and_entry_count(wallet.id, alias_for_id(wallet.id)) == (100, 1)


def test_frozen_wallet_refuses_deposits_with_409(api, client_and_key) -> None:
    wallet = make_wallet(client_and_key[0])
    wallet_set_status(wallet_id=wallet.id, status=WalletStatus.FROZEN)
    assert error_of(deposit(api, wallet.id, {"amount_minor": 5}))[:2] == (409, "wallet_frozen")
    assert balance_and_entry_count(wallet.id, alias_for_id(wallet.id)) == (0, 0)


@pytest.mark.parametrize("currency", ["usd", "XXX", "US", "", 840, None])
def test_unknown_currency_is_refused_and_creates_no_wallet(api, currency) -> None:
    before = total_rows()
    response = api.post("/v1/wallets", {"currency": currency}, format="json")
    assert error_of(response)[0] == 400
    assert error_of(response)[1] in {"unsupported_currency", "parameter_missing"}
    assert total_rows() == before


def test_missing_currency_is_parameter_missing(api) -> None:
    assert error_of(api.post("/v1/wallets", {}, format="json")) == (400, "parameter_missing", "currency")


def test_foreign_and_unknown_wallets_are_404_for_every_endpoint(api) -> None:
    stranger, _ = make_client("stranger")
    foreign = make_wallet(stranger, funded=500)
    for wallet_id in [foreign.id, new_id(3), "not-an-id", str(uuid.uuid4())]:
        for path in ["", "/balance", "/entries"]:
            assert error_of(api.get(f"/v1/wallets/{wallet_id}{path}"))[:2] == (404, "wallet_not_found")
        for path in ["/deposits", "/withdrawals"]:
            response = api.post(
                f"/v1/wallets/{wallet_id}{path}", {"amount_minor": 1}, format="json", HTTP_IDEMPOTENCY_KEY="k"
            )
            assert error_of(response)[:2] == (404, "wallet_not_found")
    assert balance_and_entry_count(foreign.id, alias_for_id(foreign.id)) == (500, 1)


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "authentication_required"),
        ("Bearer nope", "authentication_failed"),
        ("Basic abc", "authentication_failed"),
    ],
)
def test_requests_without_a_valid_key_are_401(header, code) -> None:
    api = api_for(None)
    if header:
        api.credentials(HTTP_AUTHORIZATION=header)
    response = api.post("/v1/wallets", {"currency": "USD"}, format="json")
    assert error_of(response)[:2] == (401, code)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert total_rows() == 0


def test_wallet_list_spans_all_shards_newest_first_with_cursor_pages(api, client_and_key) -> None:
    owner = client_and_key[0]
    created = [make_wallet(owner, shard=shard_aliases()[i % len(shard_aliases())]) for i in range(7)]
    make_wallet(make_client("other")[0])
    seen: list[str] = []
    cursor = None
    while True:
        url = "/v1/wallets?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = api.get(url).json()
        seen += [w["id"] for w in body["data"]]
        cursor = body["next_cursor"]
        if not body["has_more"]:
            assert cursor is None
            break
    assert seen == sorted((str(w.id) for w in created), reverse=True)
    assert {alias_for_id(uuid.UUID(i)) for i in seen} == set(shard_aliases())


def test_entries_paginate_newest_first_without_gaps(api, client_and_key) -> None:
    wallet = make_wallet(client_and_key[0])
    for i in range(1, 8):
        deposit(api, wallet.id, {"amount_minor": i}, key=f"k{i}")
    first = api.get(f"/v1/wallets/{wallet.id}/entries?limit=5").json()
    second = api.get(f"/v1/wallets/{wallet.id}/entries?limit=5&cursor={first['next_cursor']}").json()
    assert [e["amount_minor"] for e in first["data"] + second["data"]] == [7, 6, 5, 4, 3, 2, 1]
    assert second["has_more"] is False


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "cursor=%%%", "cursor=bm90LWFuLWludA"])
def test_bad_pagination_parameters_are_400(api, client_and_key, query) -> None:
    wallet = make_wallet(client_and_key[0])
    status, code, _ = error_of(api.get(f"/v1/wallets/{wallet.id}/entries?{query}"))
    assert (status, code) == (400, "invalid_request")


def test_unknown_route_and_wrong_method_have_the_error_shape(api) -> None:
    assert error_of(api.get("/v1/nothing-here"))[:2] == (404, "not_found")
    assert error_of(api.delete("/v1/wallets"))[:2] == (405, "method_not_allowed")


def test_health_reports_every_shard_the_control_database_and_redis(api) -> None:
    body = api.get("/health").json()
    assert body["status"] == "ok"
    assert set(body["components"]) == {"default", "redis", "bucket_fences", *shard_aliases()}
    assert all(c["ok"] for c in body["components"].values())


def test_openapi_schema_and_docs_are_served(api) -> None:
    from rest_framework.test import APIClient

    schema = APIClient().get("/v1/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/v1/wallets", "/v1/wallets/{wallet_id}/deposits", "/v1/wallets/{wallet_id}/entries"} <= set(paths)
    docs = APIClient().get("/v1/docs/")
    assert docs.status_code == 200
    # Swagger UI from the installed package: every script and stylesheet from our own origin.
    page = docs.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page)
    assert assets
    assert all(a.startswith("/static/drf_spectacular_sidecar/") for a in assets), assets
    assert "cdn" not in page.lower()
    served = APIClient().get(assets[0])
    assert served.status_code == 200


def test_create_api_client_command_prints_a_working_key() -> None:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("create_api_client", "cli-made", stdout=out, stderr=StringIO())
    key = out.getvalue().strip()
    assert api_for(key).post("/v1/wallets", {"currency": "EUR"}, format="json").status_code == 201
