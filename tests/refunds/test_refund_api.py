"""The refunds endpoint and what the transfer and wallet endpoints show of refunds (responses held to the schema)."""

from __future__ import annotations

import uuid

import pytest

from apps.transfers.checks import check_ledger
from apps.transfers.saga import transfer_advance
from tests.factories import ALL_DATABASES, api_for, make_client, make_wallet, wallet_balance

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def advance(transfer_id: str):
    return transfer_advance(uuid.UUID(transfer_id))  # no worker here


def pay(api, payer, payee, amount: int) -> dict:
    body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": amount, "currency": "USD"}
    created = api.post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY=f"pay-{payer.id}-{amount}")
    advance(created.json()["id"])
    return api.get(f"/v1/transfers/{created.json()['id']}").json()


def test_refunds_by_the_payees_owner_in_parts_shown_on_the_original() -> None:
    owner, key = make_client()
    api = api_for(key)
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    original = pay(api, payer, payee, 300)
    assert (original["status"], original["amount_refunded"], original["refunds"]) == ("completed", 0, [])
    url = f"/v1/transfers/{original['id']}/refunds"

    first = api.post(url, {"amount_minor": 100}, format="json", HTTP_IDEMPOTENCY_KEY="r-1")
    assert first.status_code == 202, first.content
    refund = first.json()
    assert (refund["from"], refund["to"], refund["amount_minor"], refund["refund_of"]) == (
        str(payee.id), str(payer.id), 100, original["id"]
    )  # fmt: skip
    replay = api.post(url, {"amount_minor": 100}, format="json", HTTP_IDEMPOTENCY_KEY="r-1")
    assert replay.content == first.content
    assert replay["Idempotent-Replayed"] == "true"
    reused = api.post(url, {"amount_minor": 99}, format="json", HTTP_IDEMPOTENCY_KEY="r-1")
    assert (reused.status_code, reused.json()["error"]["code"]) == (422, "idempotency_key_reused")
    assert advance(refund["id"]).status == "completed"

    rest = api.post(url, {}, format="json", HTTP_IDEMPOTENCY_KEY="r-2")  # the default: what remains
    assert rest.status_code == 202, rest.content
    assert rest.json()["amount_minor"] == 200
    advance(rest.json()["id"])
    shown = api.get(f"/v1/transfers/{original['id']}").json()
    assert shown["amount_refunded"] == 300
    assert [(r["id"], r["amount_minor"], r["status"]) for r in shown["refunds"]] == [
        (refund["id"], 100, "succeeded"), (rest.json()["id"], 200, "succeeded")
    ]  # fmt: skip
    assert api.get(f"/v1/transfers/{refund['id']}").json()["refund_of"] == original["id"]

    more = api.post(url, {"amount_minor": 1}, format="json", HTTP_IDEMPOTENCY_KEY="r-3")
    assert (more.status_code, more.json()["error"]["code"]) == (409, "transfer_fully_refunded")
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (1000, 0)
    assert check_ledger().violations == []


def test_refund_errors_are_machine_readable_and_change_nothing() -> None:
    owner, key = make_client()
    api = api_for(key)
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_00")
    original = pay(api, payer, payee, 300)
    url = f"/v1/transfers/{original['id']}/refunds"

    def code(response) -> tuple[int, str]:
        return response.status_code, response.json()["error"]["code"]

    assert code(api.post(url, {"amount_minor": 1}, format="json")) == (400, "idempotency_key_missing")
    assert code(api.post(url, {"amount_minor": 0}, format="json", HTTP_IDEMPOTENCY_KEY="e")) == (400, "invalid_amount")
    assert code(api.post(url, {"amount_minor": "5"}, format="json", HTTP_IDEMPOTENCY_KEY="e")) == (
        400, "invalid_amount"
    )  # fmt: skip
    assert code(api.post(url, [1], format="json", HTTP_IDEMPOTENCY_KEY="e")) == (400, "parameter_invalid")
    assert code(api.post(url, {"amount_minor": 301}, format="json", HTTP_IDEMPOTENCY_KEY="e")) == (
        422, "refund_exceeds_remaining"
    )  # fmt: skip
    missing = "/v1/transfers/0190a0a0-0000-7000-8000-000000000000/refunds"
    assert code(api.post(missing, {}, format="json", HTTP_IDEMPOTENCY_KEY="e")) == (404, "transfer_not_found")
    assert code(api.post("/v1/transfers/nope/refunds", {}, format="json", HTTP_IDEMPOTENCY_KEY="e")) == (
        404, "transfer_not_found"
    )  # fmt: skip
    _, stranger_key = make_client("stranger")
    assert code(api_for(stranger_key).post(url, {}, format="json", HTTP_IDEMPOTENCY_KEY="e")) == (
        404, "transfer_not_found"
    )  # fmt: skip
    assert api.get(f"/v1/transfers/{original['id']}").json()["amount_refunded"] == 0
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (700, 300)

    body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": 5000, "currency": "USD"}
    failed = api.post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY="too-much").json()
    assert failed["status"] == "failed"
    refused = api.post(f"/v1/transfers/{failed['id']}/refunds", {}, format="json", HTTP_IDEMPOTENCY_KEY="e")
    assert code(refused) == (409, "transfer_not_refundable")
    # A transfer to a wallet that does not exist failed: not refundable, whatever the missing wallet would say.
    nowhere = {**body, "to": "0190a0a0-0000-7000-8000-000000000001", "amount_minor": 10}
    lost = api.post("/v1/transfers", nowhere, format="json", HTTP_IDEMPOTENCY_KEY="to-nowhere").json()
    advance(lost["id"])
    refused = api.post(f"/v1/transfers/{lost['id']}/refunds", {}, format="json", HTTP_IDEMPOTENCY_KEY="e")
    assert code(refused) == (409, "transfer_not_refundable")
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (700, 300)


def test_the_paying_client_refunds_only_where_the_paid_wallet_allows_it() -> None:
    owner, key = make_client()
    _, merchant_key = make_client("merchant")
    api, merchant_api = api_for(key), api_for(merchant_key)
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    created = merchant_api.post("/v1/wallets", {"currency": "USD"}, format="json")
    assert created.json()["payer_may_refund"] is False
    payee_id = created.json()["id"]
    body = {"from": str(payer.id), "to": payee_id, "amount_minor": 300, "currency": "USD"}
    original = api.post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY="p").json()
    advance(original["id"])
    url = f"/v1/transfers/{original['id']}/refunds"

    refused = api.post(url, {"amount_minor": 50}, format="json", HTTP_IDEMPOTENCY_KEY="by-payer")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "refund_not_allowed")
    assert api.patch(f"/v1/wallets/{payee_id}", {"payer_may_refund": True}, format="json").status_code == 404
    allowed = merchant_api.patch(f"/v1/wallets/{payee_id}", {"payer_may_refund": True}, format="json")
    assert (allowed.status_code, allowed.json()["payer_may_refund"]) == (200, True)
    bad = merchant_api.patch(f"/v1/wallets/{payee_id}", {"payer_may_refund": "maybe"}, format="json")
    assert bad.status_code == 400
    accepted = api.post(url, {"amount_minor": 50}, format="json", HTTP_IDEMPOTENCY_KEY="by-payer")
    assert accepted.status_code in (201, 202), accepted.content
    assert api.get(f"/v1/transfers/{accepted.json()['id']}").json()["refund_of"] == original["id"]
    by_merchant = merchant_api.post(url, {"amount_minor": 50}, format="json", HTTP_IDEMPOTENCY_KEY="by-merchant")
    assert by_merchant.status_code in (201, 202), by_merchant.content
    assert api.get(f"/v1/transfers/{original['id']}").json()["amount_refunded"] == 100


def test_a_refund_of_an_id_outside_the_shard_map_is_not_found() -> None:
    _, key = make_client()
    beyond = uuid.UUID("0190a0a0-0000-7fff-8000-000000000000")  # bucket 4095: past any map's buckets here
    answer = api_for(key).post(f"/v1/transfers/{beyond}/refunds", {}, format="json", HTTP_IDEMPOTENCY_KEY="x")
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, "transfer_not_found")


def test_wallet_settings_take_json_booleans_only_and_an_empty_patch_changes_nothing() -> None:
    _, key = make_client()
    api = api_for(key)
    bad = api.post("/v1/wallets", {"currency": "USD", "payer_may_refund": 1}, format="json")
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "payer_may_refund")
    wallet = api.post("/v1/wallets", {"currency": "USD", "payer_may_refund": True}, format="json").json()
    assert wallet["payer_may_refund"] is True
    url = f"/v1/wallets/{wallet['id']}"
    assert api.patch(url, {"payer_may_refund": "false"}, format="json").status_code == 400
    unchanged = api.patch(url, {}, format="json")
    assert (unchanged.status_code, unchanged.json()["payer_may_refund"]) == (200, True)
    assert api.patch(url, {"payer_may_refund": False}, format="json").json()["payer_may_refund"] is False
