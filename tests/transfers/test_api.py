"""POST /v1/transfers and friends: validation, idempotency, reads (saga steps run in-process)."""

import threading
import uuid
from typing import Any

import pytest

from apps.sharding.ids import new_id
from apps.sharding.routing import shard_aliases
from apps.transfers import saga
from tests.factories import ALL_DATABASES, api_for, bucket_on, entry_kinds, make_client, make_wallet, raw_query
from tests.factories import wallet_balance as balance
from tests.ledger.test_api import error_of
from tests.ledger.test_concurrency import run_concurrently
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def post(api: Any, body: Any, key: str | None = "key-1", query: str = "") -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return api.post(f"/v1/transfers{query}", body, format="json", **headers)


def transfer_rows() -> int:
    return sum(
        raw_query(a, "SELECT (SELECT count(*) FROM transfers_transfer) + (SELECT count(*) FROM transfers_idempotency)")[
            0
        ][0]
        for a in shard_aliases()
    )


@pytest.fixture
def setup():
    owner, key = make_client()
    payer = make_wallet(owner, funded=10_000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    return owner, api_for(key), payer, payee


def body_for(payer, payee, amount=500, currency="USD") -> dict[str, Any]:
    return {"from": str(payer.id), "to": str(payee.id), "amount_minor": amount, "currency": currency}


def test_a_transfer_is_accepted_with_202_and_readable_with_its_history(setup) -> None:
    _, api, payer, payee = setup
    response = post(api, body_for(payer, payee))
    assert response.status_code == 202
    created = response.json()
    assert (created["from"], created["to"], created["amount_minor"], created["status"]) == (
        str(payer.id), str(payee.id), 500, "debited"
    )  # fmt: skip
    fetched = api.get(f"/v1/transfers/{created['id']}").json()
    assert fetched == created
    balance_body = api.get(f"/v1/wallets/{payer.id}/balance").json()
    assert (balance_body["posted"], balance_body["pending_out"], balance_body["available"]) == (10_000, 500, 9_500)
    saga.transfer_advance(uuid.UUID(created["id"]))
    done = api.get(f"/v1/transfers/{created['id']}").json()
    assert done["status"] == "completed"
    assert [h["status"] for h in done["status_history"]] == ["pending", "debited", "completed"]
    assert all(h["at"] for h in done["status_history"])
    balance_body = api.get(f"/v1/wallets/{payer.id}/balance").json()
    assert (balance_body["posted"], balance_body["pending_out"], balance_body["available"]) == (9_500, 0, 9_500)


def test_a_transfer_already_terminal_answers_201(setup) -> None:
    owner, api, payer, _ = setup
    same_shard_payee = make_wallet(owner, shard="shard_00")
    response = post(api, body_for(payer, same_shard_payee))
    assert response.status_code == 201
    assert response.json()["status"] == "completed"
    poor = make_wallet(owner, funded=10, shard="shard_00")
    refused = post(api, body_for(poor, same_shard_payee, amount=11), key="key-2")
    assert refused.status_code == 201
    assert (refused.json()["status"], refused.json()["failure_reason"]) == ("failed", "insufficient_funds")
    assert balance(poor.id) == 10


def test_replay_with_same_key_and_body_returns_the_first_response(setup) -> None:
    _, api, payer, payee = setup
    first = post(api, body_for(payer, payee))
    saga.transfer_advance(uuid.UUID(first.json()["id"]))  # the state moves on...
    again = post(api, body_for(payer, payee))
    assert again.status_code == first.status_code == 202
    assert again.json() == first.json()  # ...but the replay is the first response
    assert again.headers["Idempotent-Replayed"] == "true"
    assert entry_kinds(payer.id) == ["deposit", "debit"]


def test_same_key_with_another_body_is_422_and_creates_nothing(setup) -> None:
    _, api, payer, payee = setup
    post(api, body_for(payer, payee))
    before = transfer_rows()
    assert error_of(post(api, body_for(payer, payee, amount=501))) == (422, "idempotency_key_reused", "Idempotency-Key")
    assert transfer_rows() == before
    assert balance(payer.id) == 9_500


def test_twenty_concurrent_posts_with_one_key_make_one_transfer(setup) -> None:
    _, api, payer, payee = setup
    key = api._credentials["HTTP_AUTHORIZATION"].split()[1]
    responses = run_concurrently(20, lambda i: post(api_for(key), body_for(payer, payee)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.content for r in responses}) == 1
    assert sum("Idempotent-Replayed" in r.headers for r in responses) == 19
    [(count,)] = raw_query("shard_00", "SELECT count(*) FROM transfers_transfer")
    assert count == 1
    assert entry_kinds(payer.id) == ["deposit", "debit"]
    assert balance(payer.id) == 9_500


def test_a_repeat_while_the_first_request_waits_gets_409(setup) -> None:
    _, api, payer, payee = setup
    key = api._credentials["HTTP_AUTHORIZATION"].split()[1]
    first: dict[str, Any] = {}

    def waiting_request() -> None:
        # No worker runs here: the cross-shard transfer stays in flight for the whole wait.
        first["response"] = post(api_for(key), body_for(payer, payee), query="?wait=2")

    def first_request_waiting() -> bool:
        # Its key is recorded, without a response yet: what a repeat finds while it waits.
        return bool(raw_query("shard_00", "SELECT 1 FROM transfers_idempotency WHERE key = %s"
                                          " AND response_status IS NULL", ["key-1"]))  # fmt: skip

    thread = threading.Thread(target=waiting_request)
    thread.start()
    wait_until(first_request_waiting, 2, "the first request to be waiting", every=0.02)
    in_flight = post(api, body_for(payer, payee))
    thread.join()
    assert error_of(in_flight)[:2] == (409, "idempotency_request_in_progress")
    assert first["response"].status_code == 202
    replay = post(api, body_for(payer, payee))
    assert replay.json() == first["response"].json()
    assert entry_kinds(payer.id) == ["deposit", "debit"]


def foreign_wallet():
    return make_wallet(make_client("stranger")[0], funded=1000, shard="shard_00")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"amount_minor": 0}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": -5}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 5.5}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": "5"}, (400, "invalid_amount", "amount_minor")),
        ({"amount_minor": 2**63}, (400, "invalid_amount", "amount_minor")),
        ({"currency": "XYZ"}, (400, "unsupported_currency", "currency")),
        ({"currency": "EUR"}, (422, "currency_mismatch", "currency")),
        ({"to": "not-an-id"}, (400, "parameter_invalid", "to")),
        ({"to": str(uuid.uuid4())}, (400, "parameter_invalid", "to")),
        ({"to": 12}, (400, "parameter_invalid", "to")),
        ({"from": "nope"}, (400, "parameter_invalid", "from")),
        ({"from": None}, (400, "parameter_invalid", "from")),
        ({"from": "same"}, (400, "same_wallet", "to")),
        ({"from": "foreign"}, (404, "wallet_not_found", "from")),
        ({"from": "unknown"}, (404, "wallet_not_found", "from")),
        ({"drop": "currency"}, (400, "parameter_missing", "currency")),
        ({"drop": "to"}, (400, "parameter_missing", "to")),
    ],
)
def test_bad_transfer_requests_are_refused_and_change_nothing(setup, change, expected) -> None:
    _, api, payer, payee = setup
    body = body_for(payer, payee)
    special = {"same": str(payee.id), "foreign": None, "unknown": str(new_id(bucket_on("shard_01")))}
    for field, value in change.items():
        if field == "drop":
            del body[value]
        elif value == "foreign":
            body[field] = str(foreign_wallet().id)
        else:
            body[field] = special.get(value, value) if isinstance(value, str) else value
    before = transfer_rows()
    assert error_of(post(api, body)) == expected
    assert transfer_rows() == before
    assert balance(payer.id) == 10_000
    assert entry_kinds(payer.id) == ["deposit"]


def test_missing_idempotency_key_and_bad_wait_are_400(setup) -> None:
    _, api, payer, payee = setup
    assert error_of(post(api, body_for(payer, payee), key=None))[:2] == (400, "idempotency_key_missing")
    for wait in ["31", "-1", "soon", "nan"]:
        assert error_of(post(api, body_for(payer, payee), query=f"?wait={wait}")) == (400, "invalid_request", "wait")
    assert error_of(api.post("/v1/transfers", "{", content_type="application/json", HTTP_IDEMPOTENCY_KEY="k"))[:2] == (
        400,
        "invalid_json",
    )
    assert transfer_rows() == 0


def test_other_clients_cannot_see_a_transfer(setup) -> None:
    _, api, payer, payee = setup
    created = post(api, body_for(payer, payee)).json()
    stranger = api_for(make_client("stranger")[1])
    assert error_of(stranger.get(f"/v1/transfers/{created['id']}"))[:2] == (404, "transfer_not_found")
    assert error_of(api.get("/v1/transfers/not-an-id"))[:2] == (404, "transfer_not_found")
    assert error_of(api.get(f"/v1/transfers/{new_id(5)}"))[:2] == (404, "transfer_not_found")
    assert error_of(stranger.get(f"/v1/wallets/{payer.id}/transfers"))[:2] == (404, "wallet_not_found")


def test_wallet_transfers_are_listed_newest_first_in_cursor_pages(setup) -> None:
    _, api, payer, payee = setup
    ids = [post(api, body_for(payer, payee, amount=i), key=f"k{i}").json()["id"] for i in range(1, 6)]
    first = api.get(f"/v1/wallets/{payer.id}/transfers?limit=3").json()
    second = api.get(f"/v1/wallets/{payer.id}/transfers?limit=3&cursor={first['next_cursor']}").json()
    assert [t["id"] for t in first["data"] + second["data"]] == sorted(ids, reverse=True)
    assert (first["has_more"], second["has_more"]) == (True, False)
