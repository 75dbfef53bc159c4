"""The holds endpoints: every response held to the OpenAPI schema (api_for)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.transfers import saga
from apps.transfers.checks import check_ledger
from tests.factories import ALL_DATABASES, api_for, make_client, make_wallet, wallet_balance

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


@pytest.fixture
def client_and_key():
    return make_client()


def body(payer, payee, amount: int, **extra) -> dict:
    return {"from": str(payer.id), "to": str(payee.id), "amount_minor": amount, "currency": "USD", **extra}


def test_hold_capture_in_part_and_a_second_resolution_refused(client_and_key) -> None:
    owner, key = client_and_key
    api = api_for(key)
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_00")
    created = api.post("/v1/holds", body(payer, payee, 400), format="json", HTTP_IDEMPOTENCY_KEY="h-1")
    assert created.status_code == 201, created.content
    hold = created.json()
    assert (hold["status"], hold["amount_minor"], hold["captured_minor"]) == ("held", 400, None)
    replay = api.post("/v1/holds", body(payer, payee, 400), format="json", HTTP_IDEMPOTENCY_KEY="h-1")
    assert replay.content == created.content
    assert replay["Idempotent-Replayed"] == "true"
    balance = api.get(f"/v1/wallets/{payer.id}/balance").json()
    assert (balance["posted"], balance["held"], balance["available"]) == (1000, 400, 600)

    captured = api.post(f"/v1/holds/{hold['id']}/capture", {"amount_minor": 150}, format="json")
    assert captured.status_code == 200, captured.content
    assert (captured.json()["status"], captured.json()["captured_minor"]) == ("captured", 150)
    transfer = api.get(f"/v1/transfers/{captured.json()['transfer_id']}").json()
    assert (transfer["status"], transfer["amount_minor"]) == ("completed", 150)
    assert api.get(f"/v1/holds/{hold['id']}").json() == captured.json()
    again = api.post(f"/v1/holds/{hold['id']}/void", {}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "hold_not_held"
    assert "captured" in again.json()["error"]["message"]
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (850, 150)
    balance = api.get(f"/v1/wallets/{payer.id}/balance").json()
    assert (balance["posted"], balance["held"], balance["available"]) == (850, 0, 850)
    assert check_ledger().violations == []


def test_a_cross_shard_capture_and_a_void(client_and_key) -> None:
    owner, key = client_and_key
    api = api_for(key)
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    first = api.post("/v1/holds", body(payer, payee, 300), format="json", HTTP_IDEMPOTENCY_KEY="a").json()
    second = api.post("/v1/holds", body(payer, payee, 200), format="json", HTTP_IDEMPOTENCY_KEY="b").json()
    captured = api.post(f"/v1/holds/{first['id']}/capture", format="json").json()
    assert saga.transfer_advance(uuid.UUID(captured["transfer_id"])).status == "completed"
    voided = api.post(f"/v1/holds/{second['id']}/void", {"reason": "order cancelled"}, format="json")
    assert voided.json()["status"] == "voided"
    assert (wallet_balance(payer.id), wallet_balance(payee.id)) == (700, 300)
    assert check_ledger().violations == []


def test_bad_input_gets_a_clear_error_and_changes_nothing(client_and_key) -> None:
    owner, key = client_and_key
    api = api_for(key)
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")

    def post(payload, key_header: str | None = "k"):
        headers = {} if key_header is None else {"HTTP_IDEMPOTENCY_KEY": key_header}
        return api.post("/v1/holds", payload, format="json", **headers)

    assert post(body(payer, payee, 10), key_header=None).json()["error"]["code"] == "idempotency_key_missing"
    too_far = (timezone.now() + timedelta(days=31)).isoformat()
    for payload, code, param in [
        (body(payer, payee, 0), "invalid_amount", "amount_minor"),
        (body(payer, payer, 10), "same_wallet", "to"),
        (body(payer, payee, 10, expires_at="tomorrow"), "parameter_invalid", "expires_at"),
        (body(payer, payee, 10, expires_at="2020-01-01T00:00:00Z"), "expires_at_out_of_range", "expires_at"),
        (body(payer, payee, 10, expires_at=too_far), "expires_at_out_of_range", "expires_at"),
    ]:
        refused = post(payload)
        assert refused.status_code == (422 if code == "expires_at_out_of_range" else 400), refused.content
        assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (code, param)
    held = post(body(payer, payee, 100), key_header="ok").json()
    over = api.post(f"/v1/holds/{held['id']}/capture", {"amount_minor": 101}, format="json")
    assert (over.status_code, over.json()["error"]["code"]) == (422, "capture_exceeds_hold")
    bad = api.post(f"/v1/holds/{held['id']}/capture", {"amount_minor": "5"}, format="json")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_amount")
    assert api.get(f"/v1/holds/{uuid.uuid4()}").status_code == 404
    _, stranger_key = make_client("stranger")
    assert api_for(stranger_key).get(f"/v1/holds/{held['id']}").status_code == 404
    assert api_for(stranger_key).post(f"/v1/holds/{held['id']}/void", format="json").status_code == 404
    assert wallet_balance(payer.id) == 900  # only the one good hold
    assert check_ledger().violations == []
