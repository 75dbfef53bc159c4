"""Refunds and hold captures with real workers, one SIGKILLed right after the credit it ran committed."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from apps.holds.models import Hold
from apps.holds.services import HoldRequest, hold_capture, hold_create
from apps.refunds.models import Refund
from apps.refunds.services import RefundRequest, refund_create
from apps.transfers.api.views import render_transfer
from apps.transfers.checks import check_ledger
from apps.transfers.models import PayeeCredit, Transfer
from apps.transfers.saga import transfer_advance
from tests.factories import ALL_DATABASES, create_transfer, make_client, make_wallet
from tests.factories import wallet_balance as balance
from tests.workers import Worker, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]


def killed_after_its_credit(workers: list[Worker]) -> None:
    """A worker that takes the queued step, commits the credit and is SIGKILLed (whole process group)."""
    marker = Path(settings.DEVSTACK_DIR) / f"crash-{uuid.uuid4().hex}"
    marker.touch()
    doomed = Worker(env={"SHARDWALLET_CRASH_AT": f"after_credit:{marker}"}, wait_ready=False)
    workers.append(doomed)
    doomed.wait_exit(timeout=60)
    assert not marker.exists()  # it did crash there


def test_a_worker_killed_after_a_refunds_credit_leaves_it_settled_and_a_new_worker_completes_it(workers) -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    original = transfer_advance(create_transfer(owner, payer, payee.id, 400).id)
    answer = refund_create(RefundRequest(owner.id, original.id, 150, "r"), render=render_transfer)
    refund_id = answer.refund.transfer_id
    assert Transfer.objects.using("shard_01").get(id=refund_id).status == "debited"  # its task waits in Redis

    killed_after_its_credit(workers)
    assert PayeeCredit.objects.using("shard_00").get(transfer_id=refund_id).outcome == "credited"
    # Settled with the credit, in its transaction, though the refund's transfer is not completed yet.
    assert Refund.objects.using("shard_00").get(transfer_id=refund_id).status == "succeeded"
    assert Transfer.objects.using("shard_01").get(id=refund_id).status == "debited"

    workers.append(Worker(beat=True))  # the sweeper re-drives it from the database
    assert wait_terminal([refund_id], timeout=60)[refund_id].status == "completed"
    assert (balance(payer.id), balance(payee.id)) == (750, 250)
    assert Transfer.objects.using("shard_00").get(id=original.id).amount_refunded == 150
    assert check_ledger().violations == []


def test_a_worker_killed_after_a_captures_credit_and_a_new_worker_completes_the_capture(workers) -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    request = HoldRequest(owner.id, payer.id, payee.id, 500, "USD", timezone.now() + timedelta(hours=1), "h")
    held = hold_create(request).hold
    captured = hold_capture(held.id, client_id=owner.id, amount_minor=300)
    assert captured.transfer_id is not None

    killed_after_its_credit(workers)
    assert PayeeCredit.objects.using("shard_01").get(transfer_id=captured.transfer_id).outcome == "credited"
    assert balance(payee.id) == 300

    workers.append(Worker(beat=True))
    assert wait_terminal([captured.transfer_id], timeout=60)[captured.transfer_id].status == "completed"
    assert Hold.objects.using("shard_00").get(id=held.id).status == "captured"
    assert (balance(payer.id), balance(payee.id)) == (700, 300)
    assert check_ledger().violations == []
