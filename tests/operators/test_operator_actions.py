"""Operator actions through the admin: each one a service call with an audit record, and a 403
(with nothing changed) for anyone without the permission."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from apps.ledger.models import Wallet
from apps.operators.errors import ReasonRequired
from apps.operators.models import OperatorAction
from apps.operators.services import operator_freeze_wallet
from apps.transfers.checks import check_ledger
from apps.transfers.models import Transfer
from tests.factories import ALL_DATABASES, api_for, entry_kinds, make_client
from tests.factories import wallet_balance as balance
from tests.operators.helpers import cross_shard_pair, logged_in, make_staff, parked_transfer
from tests.workers import Worker, flush_redis, wait_terminal

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


@pytest.fixture
def start_worker(devstack) -> Iterator[Callable[[], Worker]]:
    """Start a real Celery worker when the test is ready for one (queue emptied first); stopped after."""
    started: list[Worker] = []

    def start() -> Worker:
        flush_redis()
        started.append(Worker())
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def wallet_status(wallet_id: uuid.UUID) -> str:
    return Wallet.objects.using("shard_01").get(id=wallet_id).status


def actions() -> list[OperatorAction]:
    return list(OperatorAction.objects.using("default").order_by("id"))


def test_freeze_via_admin_then_a_transfer_to_the_wallet_fails_and_refunds_the_payer(start_worker) -> None:
    start_worker()
    owner, key = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    operator = make_staff("olga", "operators")
    client = logged_in(operator)

    form = client.get(f"/admin/ledger/wallet/{payee.id}/freeze/")
    assert form.status_code == 200
    assert "Reason" in form.content.decode()
    response = client.post(f"/admin/ledger/wallet/{payee.id}/freeze/", {"reason": "  KYC check failed, ticket 42  "})
    assert response.status_code == 302
    assert response["Location"] == f"/admin/ledger/wallet/{payee.id}/change/"
    assert wallet_status(payee.id) == "frozen"
    [record] = actions()
    assert (record.actor_id, record.actor_username, record.action) == (operator.id, "olga", "freeze_wallet")
    assert (record.target_id, record.shard, record.reason) == (payee.id, "shard_01", "KYC check failed, ticket 42")
    assert record.outcome == "succeeded"
    assert "now frozen (was active)" in record.detail
    assert record.finished_at >= record.created_at
    page = client.get(f"/admin/ledger/wallet/{payee.id}/change/").content.decode()
    assert "Unfreeze wallet" in page
    assert "now frozen" in page  # the outcome, as a message

    body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": 400, "currency": "USD"}
    created = api_for(key).post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY="to-frozen")
    assert created.status_code == 202
    transfer_id = uuid.UUID(created.json()["id"])
    final = wait_terminal([transfer_id], timeout=30)[transfer_id]
    assert (final.status, final.failure_reason) == ("failed", "payee_frozen")
    assert entry_kinds(payer.id) == ["deposit", "debit", "refund"]
    assert (balance(payer.id), balance(payee.id)) == (1000, 0)
    assert check_ledger().violations == []


@pytest.mark.parametrize("role", ["viewers", "auditors"])
def test_a_viewer_cannot_freeze_and_nothing_changes(role) -> None:
    owner, _ = make_client()
    _, wallet = cross_shard_pair(owner)
    client = logged_in(make_staff("vic", role))
    assert client.get(f"/admin/ledger/wallet/{wallet.id}/change/").status_code == 200  # may look
    assert client.get(f"/admin/ledger/wallet/{wallet.id}/freeze/").status_code == 403
    response = client.post(f"/admin/ledger/wallet/{wallet.id}/freeze/", {"reason": "let me"})
    assert response.status_code == 403
    assert wallet_status(wallet.id) == "active"
    assert actions() == []


def test_an_action_needs_a_reason_and_without_one_nothing_changes() -> None:
    owner, _ = make_client()
    _, wallet = cross_shard_pair(owner)
    operator = make_staff("olga", "operators")
    response = logged_in(operator).post(f"/admin/ledger/wallet/{wallet.id}/freeze/", {"reason": "   "})
    assert response.status_code == 200  # the form again, with its error
    assert "This field is required." in response.content.decode()
    assert wallet_status(wallet.id) == "active"
    with pytest.raises(ReasonRequired):
        operator_freeze_wallet(actor=operator, wallet_id=wallet.id, reason="")
    assert wallet_status(wallet.id) == "active"
    assert actions() == []


def test_unfreeze_and_a_repeated_freeze_are_recorded_as_what_they_did() -> None:
    owner, _ = make_client()
    _, wallet = cross_shard_pair(owner)
    client = logged_in(make_staff("olga", "operators"))
    client.post(f"/admin/ledger/wallet/{wallet.id}/freeze/", {"reason": "fraud alert"})
    operator_freeze_wallet(actor=make_staff("otto", "operators"), wallet_id=wallet.id, reason="same alert")
    client.post(f"/admin/ledger/wallet/{wallet.id}/unfreeze/", {"reason": "cleared"})
    assert wallet_status(wallet.id) == "active"
    records = actions()
    assert [(r.action, r.actor_username, r.outcome) for r in records] == [
        ("freeze_wallet", "olga", "succeeded"),
        ("freeze_wallet", "otto", "succeeded"),
        ("unfreeze_wallet", "olga", "succeeded"),
    ]
    assert "already frozen; nothing changed" in records[1].detail


def test_redrive_via_admin_unparks_the_transfer_and_the_worker_completes_it(start_worker) -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    transfer = parked_transfer(owner, payer, payee.id, 200)
    start_worker()  # after emptying the queue: the transfer's original message is long gone
    client = logged_in(make_staff("olga", "operators"))
    assert "Re-drive transfer" in client.get(f"/admin/transfers/transfer/{transfer.id}/change/").content.decode()
    response = client.post(f"/admin/transfers/transfer/{transfer.id}/redrive/", {"reason": "shard_01 is back"})
    assert response.status_code == 302
    final = wait_terminal([transfer.id], timeout=30)[transfer.id]
    assert final.status == "completed"
    assert final.parked_at is None
    assert (balance(payer.id), balance(payee.id)) == (800, 200)
    [record] = actions()
    assert (record.action, record.outcome, record.shard) == ("redrive_transfer", "succeeded", "shard_00")


def test_force_compensate_via_admin_refunds_and_records_it() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    transfer = parked_transfer(owner, payer, payee.id, 600)
    client = logged_in(make_staff("olga", "operators"))
    response = client.post(
        f"/admin/transfers/transfer/{transfer.id}/compensate/",
        {"reason": "payee bank closed", "next": "/admin/operations/"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/admin/operations/"
    final = Transfer.objects.using("shard_00").get(id=transfer.id)
    assert (final.status, final.failure_reason) == ("failed", "operator_compensated")
    assert balance(payer.id) == 1000
    [record] = actions()
    assert (record.action, record.outcome) == ("compensate_transfer", "succeeded")
    assert "payer was refunded" in record.detail

    # A second attempt is refused, recorded, and changes nothing.
    client.post(f"/admin/transfers/transfer/{transfer.id}/compensate/", {"reason": "again"})
    assert [r.outcome for r in actions()] == ["succeeded", "refused"]
    assert entry_kinds(payer.id) == ["deposit", "debit", "refund"]
    assert check_ledger().violations == []


def test_a_viewer_cannot_redrive_or_compensate() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    transfer = parked_transfer(owner, payer, payee.id, 600)
    client = logged_in(make_staff("vic", "viewers"))
    page = client.get(f"/admin/transfers/transfer/{transfer.id}/change/").content.decode()
    assert "Force-compensate" not in page
    for action in ("redrive", "compensate"):
        assert client.post(f"/admin/transfers/transfer/{transfer.id}/{action}/", {"reason": "x"}).status_code == 403
    unchanged = Transfer.objects.using("shard_00").get(id=transfer.id)
    assert (unchanged.status, unchanged.parked_at) == ("debited", transfer.parked_at)
    assert balance(payer.id) == 400
    assert actions() == []
