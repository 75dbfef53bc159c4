"""A saga step that kills its worker every time is parked after its retries, not redelivered forever."""

import time

import pytest

from apps.transfers.checks import check_ledger
from apps.transfers.models import PayeeCredit, Transfer
from apps.transfers.services import transfer_redrive
from tests.factories import ALL_DATABASES, create_transfer, make_client, make_wallet
from tests.factories import wallet_balance as balance
from tests.workers import Worker, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

KILLS_EVERY_TIME = {"SHARDWALLET_CRASH_AT": "after_credit:always", "SHARDWALLET_SAGA_MAX_RETRIES": "1"}


def test_a_step_that_always_kills_its_worker_is_parked_by_its_stored_attempts(workers) -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    transfer = create_transfer(owner, payer, payee.id, 300)
    # A supervisor restarts the worker whenever it dies; the beat's sweeper re-sends stalled transfers.
    deadline = time.monotonic() + 90
    kills = 0
    while Transfer.objects.using("shard_00").get(id=transfer.id).parked_at is None:
        assert time.monotonic() < deadline, f"never parked after {kills} worker kills"
        if not workers or workers[-1].process.poll() is not None:
            kills += bool(workers)
            workers.append(Worker(beat=True, env=KILLS_EVERY_TIME))
        time.sleep(0.2)
    row = Transfer.objects.using("shard_00").get(id=transfer.id)
    assert kills >= 2, "the drain's run and the task's run each killed a worker"
    assert (row.status, row.attempts) == ("debited", 3)
    assert PayeeCredit.objects.using("shard_01").get(transfer_id=transfer.id).outcome == "credited"
    # The operator fixes the cause (a worker without the fault) and re-drives it: it completes, once.
    workers[-1].kill()
    workers.append(Worker(beat=True))
    assert transfer_redrive(transfer.id)
    assert wait_terminal([transfer.id], timeout=60)[transfer.id].status == "completed"
    assert (balance(payer.id), balance(payee.id)) == (700, 300)
    assert check_ledger().violations == []
