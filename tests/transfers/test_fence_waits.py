"""A fence holds transfers up; it never makes them fail or park (a stalled move must not cost money)."""

import time

import pytest

from apps.sharding.ids import bucket_of
from apps.transfers.checks import check_ledger
from apps.transfers.models import Transfer
from tests.factories import ALL_DATABASES, create_transfer, make_client, make_wallet, raw_query
from tests.factories import wallet_balance as balance
from tests.workers import Worker, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

# One attempt and its retry, a short wait for the fence per run: without the rule, parked in seconds.
IMPATIENT = {"SHARDWALLET_SAGA_MAX_RETRIES": "1", "SHARDWALLET_SHARD_MOVE_WAIT_SECONDS": "0.3"}


def test_a_transfer_whose_credit_is_fenced_waits_without_spending_attempts_and_completes_after(workers) -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    bucket = bucket_of(payee.id)
    # A fence with no switch behind it: what a mover stopped after its fence leaves.
    raw_query("shard_01", "UPDATE sharding_bucket_owner SET state = 'fenced' WHERE bucket = %s", [bucket])
    try:
        transfer = create_transfer(owner, payer, payee.id, 300)
        workers.append(Worker(beat=True, env=IMPATIENT))
        time.sleep(8)  # many runs of its task, each held up by the fence
        row = Transfer.objects.using("shard_00").get(id=transfer.id)
        assert row.parked_at is None, row.last_error
        assert row.status == "debited"
        assert row.attempts <= 2  # the drain's claim, and at most one run under way
        assert "waiting for a bucket move" in row.last_error
    finally:
        raw_query("shard_01", "UPDATE sharding_bucket_owner SET state = 'owned' WHERE bucket = %s", [bucket])
    assert wait_terminal([transfer.id], timeout=60)[transfer.id].status == "completed"
    assert (balance(payer.id), balance(payee.id)) == (700, 300)
    assert check_ledger().violations == []
