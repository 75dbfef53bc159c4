"""A transaction under a replication origin (a move's copy or clean-up) is dropped as it
streams: its rows are never held until its Commit, and a long run of such transactions has
its position confirmed as it goes. Real pgoutput messages from a real shard, a real chDB store."""

from __future__ import annotations

import pytest

from apps.audit.sink import AuditSink
from apps.ledger.services import wallet_fund
from tests.audit.helpers import count
from tests.audit.moves import mover_session
from tests.audit.replay import peek, recorded_slot, replay
from tests.factories import ALL_DATABASES, make_client, make_wallet

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

COPIED_ROWS = 3000
SMALL_RUN = 120


def test_a_mover_transactions_rows_are_never_held_and_a_run_of_them_is_confirmed_as_it_goes(
    store_sink: AuditSink,
) -> None:
    owner, _ = make_client()
    wallet = make_wallet(owner, shard="shard_01")
    with recorded_slot("shard_01") as (slot, publication):
        with mover_session("shard_01") as conn:
            # One big copy (a move's), then a run of small transactions under the same origin.
            copied = [
                row[0]
                for row in conn.execute(
                    "INSERT INTO ledger_wallet SELECT gen_random_uuid(), 1, 'USD', 0, 'active', 0, now(), now()"
                    " FROM generate_series(1, %s) RETURNING id",
                    [COPIED_ROWS],
                ).fetchall()
            ]
            for wallet_id in copied[:SMALL_RUN]:
                conn.execute("UPDATE ledger_wallet SET updated_at = now() WHERE id = %s", [wallet_id])
        # 3 changes, no origin: the entry, the wallet, the deposit's event.
        wallet_fund(wallet_id=wallet.id, amount_minor=5, reference="ordinary")
        with mover_session("shard_01") as conn:
            conn.execute("DELETE FROM ledger_wallet WHERE id = ANY(%s)", [copied])  # the clean-up
        messages = peek("shard_01", slot, publication)

    reader, cursor = replay(store_sink, "shard_01", messages, batch_max_changes=50)

    status = reader.board.shards["shard_01"]
    assert status.origin_transactions_skipped == 1 + SMALL_RUN + 1
    # Only the ordinary transaction's changes were ever held; the copy's 3000 never were.
    assert status.held_changes_peak == 3
    assert status.changes_written == 3
    stored = "SELECT count() FROM audit.changes WHERE shard = 'shard_01' AND commit_lsn > {low:UInt64}"
    assert count(store_sink.client, stored, {"low": messages[0].data_start}) == 3
    # The run of skipped transactions was confirmed in steps, before the stream reached its end.
    during_run = [lsn for read, lsn in cursor.feedback if read < len(messages)]
    assert len(during_run) >= SMALL_RUN // 50
    assert during_run == sorted(during_run)
    assert cursor.feedback[-1][1] >= messages[-1].data_start
