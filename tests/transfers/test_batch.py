"""POST /v1/transfers/batch: one result per item, the single endpoint's guarantees for each."""

import uuid
from typing import Any

import pytest

from apps.sharding.ids import new_id
from apps.sharding.routing import shard_aliases
from tests.factories import ALL_DATABASES, api_for, bucket_on, entry_kinds, make_client, make_wallet, raw_query
from tests.factories import wallet_balance as balance
from tests.ledger.test_api import error_of
from tests.ledger.test_concurrency import run_concurrently

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def item(payer, payee, amount=100, key=None, **extra) -> dict[str, Any]:
    body = {"idempotency_key": key or str(uuid.uuid4()), "from": str(payer.id), "to": str(payee.id),
            "amount_minor": amount, "currency": "USD"}  # fmt: skip
    return {**body, **extra}


def send(api, items) -> list[dict[str, Any]]:
    response = api.post("/v1/transfers/batch", {"transfers": items}, format="json")
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    return results


def transfers_count() -> int:
    return sum(raw_query(a, "SELECT count(*) FROM transfers_transfer")[0][0] for a in shard_aliases())


@pytest.fixture
def wallets():
    owner, key = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    return owner, api_for(key), payer, make_wallet(owner, shard="shard_01"), make_wallet(owner, shard="shard_00")


def test_each_item_gets_its_own_result_and_a_bad_one_sinks_nothing(wallets) -> None:
    _, api, payer, far, near = wallets
    stranger = make_wallet(make_client("stranger")[0], funded=500)
    results = send(api, [
        item(payer, far, 100),                      # cross shard: in flight
        item(payer, near, 200),                     # same shard: completed at once
        item(payer, far, 0),                        # invalid amount
        item(stranger, far, 10),                    # not the client's wallet
        item(payer, far, 5000),                     # insufficient funds: a failed transfer
        item(payer, payer, 10),                     # to itself
        {"from": str(payer.id)},                    # no key
        item(payer, far, 10, currency="EUR"),       # not the payer's currency
    ])  # fmt: skip
    assert [(r["outcome"], r["status"]) for r in results] == [
        ("accepted", 202), ("accepted", 201), ("rejected", 400), ("rejected", 404),
        ("accepted", 201), ("rejected", 400), ("rejected", 400), ("rejected", 422),
    ]  # fmt: skip
    assert results[0]["transfer"]["status"] == "debited"
    assert results[1]["transfer"]["status"] == "completed"
    assert (results[4]["transfer"]["status"], results[4]["transfer"]["failure_reason"]) == (
        "failed", "insufficient_funds"
    )  # fmt: skip
    assert [r["error"]["code"] for r in results if r["error"]] == [
        "invalid_amount", "wallet_not_found", "same_wallet", "idempotency_key_missing", "currency_mismatch"
    ]  # fmt: skip
    assert all(r["transfer"] is None for r in results if r["outcome"] == "rejected")
    assert balance(payer.id) == 700
    assert balance(near.id) == 200
    assert balance(stranger.id) == 500
    assert transfers_count() == 3


def test_resending_a_batch_replays_every_item_and_moves_nothing(wallets) -> None:
    _, api, payer, far, near = wallets
    items = [item(payer, far, 100), item(payer, near, 50), item(payer, far, 10**6)]
    first = send(api, items)
    again = send(api, items)
    assert [r["outcome"] for r in again] == ["replayed"] * 3
    assert [(r["status"], r["transfer"]) for r in again] == [(r["status"], r["transfer"]) for r in first]
    assert entry_kinds(payer.id) == ["deposit", "debit", "debit"]
    assert balance(payer.id) == 850
    assert transfers_count() == 3


def test_keys_are_shared_with_the_single_endpoint_and_reuse_is_refused(wallets) -> None:
    _, api, payer, far, _ = wallets
    single = api.post(
        "/v1/transfers", {k: v for k, v in item(payer, far, 100).items() if k != "idempotency_key"},
        format="json", HTTP_IDEMPOTENCY_KEY="shared-key",
    )  # fmt: skip
    results = send(api, [item(payer, far, 100, key="shared-key"), item(payer, far, 101, key="shared-key")])
    assert results[0]["outcome"] == "replayed"
    assert results[0]["transfer"] == single.json()
    assert (results[1]["outcome"], results[1]["status"], results[1]["error"]["code"]) == (
        "rejected", 422, "idempotency_key_reused"
    )  # fmt: skip
    assert balance(payer.id) == 900


def test_the_same_key_twice_in_one_batch_is_applied_once(wallets) -> None:
    _, api, payer, far, _ = wallets
    results = send(api, [item(payer, far, 100, key="k"), item(payer, far, 100, key="k"), item(payer, far, 7, key="k")])
    assert [r["outcome"] for r in results] == ["accepted", "replayed", "rejected"]
    assert results[1]["transfer"] == results[0]["transfer"]
    assert results[2]["error"]["code"] == "idempotency_key_reused"
    assert balance(payer.id) == 900


@pytest.mark.parametrize(
    "body",
    [{}, {"transfers": []}, {"transfers": "x"}, [1], {"transfers": [{}] * 1001}],
)
def test_a_malformed_batch_is_400_and_changes_nothing(wallets, body) -> None:
    _, api, payer, _, _ = wallets
    response = api.post("/v1/transfers/batch", body, format="json")
    assert error_of(response)[:3] == (400, "invalid_request", "transfers")
    assert transfers_count() == 0
    assert balance(payer.id) == 1000


def test_concurrent_copies_of_one_batch_make_each_transfer_once(wallets) -> None:
    _, api, payer, far, near = wallets
    key = api._credentials["HTTP_AUTHORIZATION"].split()[1]
    items = [item(payer, far if i % 2 else near, 10 + i) for i in range(20)]
    responses = run_concurrently(
        6, lambda i: api_for(key).post("/v1/transfers/batch", {"transfers": items}, format="json")
    )
    assert {r.status_code for r in responses} == {200}
    ids = {tuple(r["transfer"]["id"] for r in resp.json()["results"]) for resp in responses}
    assert len(ids) == 1, "every copy reports the same transfers"
    assert transfers_count() == 20
    assert balance(payer.id) == 1000 - sum(10 + i for i in range(20))


def test_unknown_payee_in_a_batch_fails_later_with_a_refund(wallets) -> None:
    from apps.transfers import saga

    _, api, payer, _, _ = wallets
    missing = new_id(bucket_on("shard_01"))
    [result] = send(api, [{**item(payer, payer, 100), "to": str(missing)}])
    assert result["outcome"] == "accepted"
    done = saga.transfer_advance(uuid.UUID(result["transfer"]["id"]))
    assert (done.status, done.failure_reason) == ("failed", "payee_not_found")
    assert balance(payer.id) == 1000


def test_items_of_one_payer_apply_in_order_until_the_money_runs_out(wallets) -> None:
    from apps.transfers import saga
    from apps.transfers.checks import check_ledger

    _, api, payer, far, near = wallets
    results = send(api, [item(payer, near, 400), item(payer, far, 400), item(payer, near, 400), item(payer, far, 200)])
    statuses = [(r["transfer"]["status"], r["transfer"]["failure_reason"]) for r in results]
    assert statuses == [("completed", None), ("debited", None), ("failed", "insufficient_funds"), ("debited", None)]
    rows = raw_query(
        "shard_00",
        "SELECT seq, amount_minor, balance_after_minor FROM ledger_entry WHERE wallet_id = %s ORDER BY seq",
        [payer.id],
    )
    assert rows == [(1, 1000, 1000), (2, -400, 600), (3, -400, 200), (4, -200, 0)]
    assert saga.drain_debited("shard_00").completed == 2
    assert (balance(payer.id), balance(near.id), balance(far.id)) == (0, 400, 600)
    assert check_ledger().violations == []


def test_a_same_shard_batch_credit_past_the_bigint_limit_fails_that_item_only(wallets) -> None:
    owner, api, payer, _, near = wallets
    full = make_wallet(owner, funded=2**63 - 1 - 50, shard="shard_00")
    results = send(api, [item(payer, full, 51), item(payer, near, 10)])
    assert (results[0]["transfer"]["status"], results[0]["transfer"]["failure_reason"]) == (
        "failed", "payee_balance_limit"
    )  # fmt: skip
    assert results[1]["transfer"]["status"] == "completed"
    assert balance(payer.id) == 990
    assert balance(full.id) == 2**63 - 1 - 50
