"""Fault injection with real processes: a worker killed mid-saga, a shard stopped, Redis flushed."""

import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from django.utils import timezone

from apps.transfers.checks import check_ledger
from apps.transfers.models import PayeeCredit, Transfer
from apps.transfers.services import transfer_redrive
from tests.factories import ALL_DATABASES, create_transfer, entry_kinds, make_client, make_wallet
from tests.factories import wallet_balance as balance
from tests.polling import wait_until
from tests.workers import TaskEvent, Worker, flush_redis, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]


def cross_shard_pair(amount: int = 1000):
    owner, _ = make_client()
    return owner, make_wallet(owner, funded=amount, shard="shard_00"), make_wallet(owner, shard="shard_01")


def transfer_row(transfer_id: uuid.UUID) -> Transfer:
    return Transfer.objects.using("shard_00").get(id=transfer_id)


def test_worker_killed_after_the_credit_commits_is_resumed_by_a_new_worker(workers) -> None:
    owner, payer, payee = cross_shard_pair()
    transfer = create_transfer(owner, payer, payee.id, 400)  # debited; its task waits in Redis
    marker = Path(settings.DEVSTACK_DIR) / f"crash-{uuid.uuid4().hex}"
    marker.touch()
    doomed = Worker(env={"SHARDWALLET_CRASH_AT": f"after_credit:{marker}"}, wait_ready=False)
    workers.append(doomed)
    doomed.wait_exit(timeout=60)  # SIGKILL of its whole process group, right after the credit committed
    assert not marker.exists()
    assert PayeeCredit.objects.using("shard_01").get(transfer_id=transfer.id).outcome == "credited"
    assert transfer_row(transfer.id).status == "debited"
    assert balance(payee.id) == 400

    # The killed task's message is unacknowledged in Redis; the sweeper re-drives from the database.
    workers.append(Worker(beat=True))
    assert wait_terminal([transfer.id], timeout=60)[transfer.id].status == "completed"
    assert entry_kinds(payee.id) == ["credit"]
    assert (balance(payer.id), balance(payee.id)) == (600, 400)
    assert check_ledger().violations == []


def test_credit_retries_while_the_payee_shard_is_down_and_completes_when_it_is_back(workers, payee_shard) -> None:
    owner, payer, payee = cross_shard_pair()
    payee_shard.stop()
    transfer = create_transfer(owner, payer, payee.id, 250)
    workers.append(Worker())
    deadline = time.monotonic() + 30

    def retried_with_its_error() -> bool:
        # Attempts are counted before each run and its error recorded after (a connect timeout later).
        row = transfer_row(transfer.id)
        return row.attempts >= 2 and "OperationalError" in row.last_error

    while not retried_with_its_error() and time.monotonic() < deadline:
        time.sleep(0.2)
    row = transfer_row(transfer.id)
    assert row.attempts >= 2, "the credit step was retried"
    assert row.status == "debited"
    assert "OperationalError" in row.last_error
    payee_shard.start()
    connections["shard_01"].close()
    assert wait_terminal([transfer.id], timeout=60)[transfer.id].status == "completed"
    assert (balance(payer.id), balance(payee.id)) == (750, 250)
    assert check_ledger().violations == []


def test_once_one_retried_transfer_succeeds_the_others_finish_without_waiting_for_their_tries(
    workers, payee_shard
) -> None:
    """After an outage each transfer that met it waits for its own task's next try, one by one
    behind the queue. The first try that succeeds sends a retry drain of its payer shard, which
    finishes the others in a batch: their own tries then find them done and count nothing."""
    owner, payer, payee = cross_shard_pair(amount=10_000)
    payee_shard.stop()
    transfers = [create_transfer(owner, payer, payee.id, 10 + i) for i in range(20)]
    # Tries seconds apart, so that the drain comes before most of them.
    workers.append(
        Worker(env={"SHARDWALLET_SAGA_RETRY_BASE_SECONDS": "4", "SHARDWALLET_SAGA_RETRY_MAX_SECONDS": "120"})
    )
    wait_until(
        lambda: all(transfer_row(t.id).attempts >= 2 for t in transfers), 60, "every transfer to have failed twice"
    )
    payee_shard.start()
    connections["shard_01"].close()
    attempts_then = {t.id: transfer_row(t.id).attempts for t in transfers}
    finished = wait_terminal([t.id for t in transfers], timeout=90)
    assert {row.status for row in finished.values()} == {"completed"}
    untried = [t.id for t in transfers if transfer_row(t.id).attempts == attempts_then[t.id]]
    assert len(untried) >= len(transfers) // 2, f"only {len(untried)} finished without a try of their own"
    drains = [
        e for e in workers[0].task_events() if e.name.endswith(".drain_retried_transfers") and e.event == "succeeded"
    ]
    assert sum(int(e.result) for e in drains) >= len(untried)
    assert entry_kinds(payee.id) == ["credit"] * len(transfers)
    assert balance(payee.id) == sum(10 + i for i in range(20))
    assert check_ledger().violations == []


def test_lost_messages_are_re_driven_by_the_sweeper(workers) -> None:
    owner, payer, payee = cross_shard_pair(amount=10_000)
    transfers = [create_transfer(owner, payer, payee.id, 100 + i) for i in range(10)]
    flush_redis()  # every queued saga message is gone
    workers.append(Worker(beat=True))
    finished = wait_terminal([t.id for t in transfers], timeout=60)
    assert {t.status for t in finished.values()} == {"completed"}
    assert balance(payee.id) == sum(100 + i for i in range(10))
    assert check_ledger().violations == []


def test_a_step_that_keeps_failing_is_parked_and_an_operator_can_re_drive_it(workers, payee_shard) -> None:
    owner, payer, payee = cross_shard_pair()
    payee_shard.stop()
    transfer = create_transfer(owner, payer, payee.id, 300)
    workers.append(Worker(beat=True, env={"SHARDWALLET_SAGA_MAX_RETRIES": "2"}))
    deadline = time.monotonic() + 30
    while transfer_row(transfer.id).parked_at is None and time.monotonic() < deadline:
        time.sleep(0.2)
    row = transfer_row(transfer.id)
    assert row.parked_at is not None
    assert row.status == "debited"
    payee_shard.start()
    connections["shard_01"].close()
    # Parked transfers are left to operators: let a sweep run that found this one idle past the
    # threshold, with its payee's shard back (a sweep received once both hold has looked).
    idle_enough = row.updated_at + timedelta(seconds=settings.SAGA_STALLED_AFTER_SECONDS)
    wait_until(lambda: timezone.now() > idle_enough, 30, "the transfer to be idle past the sweeper's threshold")
    worker = workers[0]
    earlier = {e.id for e in worker.task_events()}

    def sweep_since() -> list[TaskEvent]:
        return [e for e in worker.task_events() if e.name.endswith(".sweep_stalled_transfers") and e.id not in earlier]

    [sweep_id, *_] = wait_until(lambda: [e.id for e in sweep_since() if e.event == "received"], 30, "a sweep")
    [sweep] = wait_until(lambda: [e for e in sweep_since() if e.id == sweep_id and e.event == "succeeded"], 10,
                         "the sweep to finish")  # fmt: skip
    assert sweep.result == "0", "the sweep re-drove nothing"
    after_sweep = transfer_row(transfer.id)
    assert (after_sweep.status, after_sweep.parked_at, after_sweep.attempts) == ("debited", row.parked_at, row.attempts)
    assert after_sweep.updated_at == row.updated_at
    assert balance(payee.id) == 0
    assert transfer_redrive(transfer.id)
    assert wait_terminal([transfer.id], timeout=60)[transfer.id].status == "completed"
    assert balance(payee.id) == 300
    assert check_ledger().violations == []


def test_api_answers_503_while_the_payers_shard_is_down_and_a_retry_then_succeeds(devstack) -> None:
    from tests.factories import api_for

    owner, key = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_01")
    payee = make_wallet(owner, shard="shard_00")
    cluster = next(c for c in devstack.clusters() if c.server.alias == "shard_01")
    body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": 100, "currency": "USD"}
    cluster.stop()
    try:
        down = api_for(key).post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY="k-503")
    finally:
        cluster.start()
    assert down.status_code == 503
    assert down.json()["error"]["code"] == "service_unavailable"
    connections["shard_01"].close()
    retry = api_for(key).post("/v1/transfers", body, format="json", HTTP_IDEMPOTENCY_KEY="k-503")
    assert retry.status_code == 202
    assert balance(payer.id) == 900
