"""reconcile at consistent points: real shards, a real `run_cdc` process, real chDB, real workers."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from apps.audit import reconcile as reconcile_module
from apps.audit.pgoutput import lsn_to_str
from apps.audit.reader import drop_slot
from apps.audit.reconcile import reconcile
from apps.ledger.models import WalletStatus
from apps.ledger.services import WalletChanges, wallet_create, wallet_fund, wallet_set_status, wallet_update
from apps.sharding.ids import bucket_of
from apps.transfers.saga import transfer_advance
from apps.transfers.selectors import transfer_get
from apps.transfers.services import transfer_park
from tests.audit.cdc import CdcProcess, wait_until
from tests.audit.helpers import caught_up
from tests.audit.moves import control_epoch, copy_bucket, fence, mover_session, own, restore_buckets
from tests.audit.store_edit import write_store
from tests.factories import ALL_DATABASES, create_transfer, make_client, make_wallet, raw_query
from tests.workers import Worker, wait_terminal

# Heartbeats twice a second: an idle shard's store position passes any point quickly.
FAST = {"SHARDWALLET_AUDIT_HEARTBEAT_SECONDS": "0.5", "SHARDWALLET_AUDIT_STOPPED_RETRY_SECONDS": "2"}

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]


def run(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


def query_rows(cdc: CdcProcess, name: str, *params: str) -> list[dict[str, str]]:
    """A named audit query through the command, as rows of {column: text}."""
    lines = run("audit_query", name, *(a for p in params for a in ("--param", p)), "--port", str(cdc.port)).splitlines()
    header = [c.strip() for c in lines[0].split("|")]
    return [dict(zip(header, (c.strip() for c in line.split("|")), strict=True)) for line in lines[2:-1]]


def unseen_entry(alias: str, beside: uuid.UUID, *, seq: int, balance_after: int) -> uuid.UUID:
    """A deposit of 5 in `beside`'s wallet written under the mover's replication origin, so the
    CDC never streams it; its id is `beside`'s plus one."""
    entry = uuid.UUID(int=beside.int + 1)
    with mover_session(alias) as conn:
        conn.execute(
            "INSERT INTO ledger_entry (id, wallet_id, seq, reference, kind, amount_minor, balance_after_minor,"
            " created_at) SELECT %s, wallet_id, %s, 'unseen', 'deposit', 5, %s, now() FROM ledger_entry"
            " WHERE id = %s",
            [entry, seq, balance_after, beside],
        )
    return entry


def test_reconcile_agrees_while_deposits_and_cross_shard_transfers_keep_coming(
    cdc: CdcProcess, workers: list[Worker]
) -> None:
    workers.append(Worker())
    owner, _ = make_client()
    wallets = [make_wallet(owner, funded=1_000_000, shard=s) for s in ("shard_00", "shard_01") for _ in range(4)]
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 30, "the first catch-up")
    stop = threading.Event()
    made: list[uuid.UUID] = []
    errors: list[BaseException] = []

    def traffic(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                payer = rng.choice(wallets)
                if rng.random() < 0.3:
                    wallet_fund(wallet_id=payer.id, amount_minor=rng.randint(1, 500), reference=str(uuid.uuid4()))
                    stop.wait(0.02)
                    continue
                payee = rng.choice([w for w in wallets if w.id != payer.id])
                made.append(create_transfer(owner, payer, payee.id, rng.randint(1, 300)).id)
                # Paced: the point is traffic during the reconciles, not whether the CDC outruns three
                # unthrottled writers on a machine the other test worker also loads.
                stop.wait(0.02)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=traffic, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(made) > 30, 30, "transfers under way")
        counts, reports = [len(made)], []
        for _ in range(3):
            # The point is agreement under traffic, not the CDC's speed: in a slow hour it once
            # needed more than 20 s to reach the shards' WAL position with the writers still going.
            reports.append(reconcile(client, wait=60))
            counts.append(len(made))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert counts == sorted(set(counts)), counts  # the traffic went on during each of the reconciles
    for report in reports:
        assert report.ok, report.differences
        assert report.attempts == 1  # exact at its points: nothing needed a second look
        assert report.wallets >= len(wallets)
        assert report.entries > 0
        assert report.transfers > 0
    try:
        wait_terminal(made, timeout=30)
    except AssertionError:
        # A drain can leave a transfer it claimed but could not lock for the sweeper (beat,
        # not run here: its stall window is a minute); do the sweeper's job, for those few only.
        in_flight = [t for t in made if not transfer_get(transfer_id=t).is_terminal]
        assert len(in_flight) <= max(3, len(made) // 50), f"{len(in_flight)} of {len(made)} transfers never ended"
        for transfer_id in in_flight:
            assert transfer_advance(transfer_id).is_terminal
    wait_until(lambda: caught_up(client), 30, "the final catch-up")
    final = reconcile(client, wait=20)
    assert final.ok, final.differences
    assert final.attempts == 1  # nothing to look at twice once the traffic stopped


def test_both_sides_hash_nulls_unicode_separators_and_timestamps_alike(cdc: CdcProcess) -> None:
    """The canonical text of a row is the same in PostgreSQL and ClickHouse for every kind of value."""
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1_000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    # A key of multi-byte characters and the canonical text's own separators.
    wallet_fund(wallet_id=payer.id, amount_minor=1, reference="clé|€|x:1~")
    parked = create_transfer(owner, payer, payee.id, 5)  # no worker: it stays debited, then is parked
    assert transfer_park(parked.id, "a test")
    raw_query("shard_00", "UPDATE ledger_wallet SET updated_at = date_trunc('second', updated_at) WHERE id = %s",
              [payer.id])  # fmt: skip
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "catch-up")
    report = reconcile(client, wait=15)
    assert report.ok, report.differences
    assert report.attempts == 1
    [(parked_at,)] = client.query(
        "SELECT parked_at FROM audit.transfers FINAL WHERE transfer_id = {id:UUID}", parameters={"id": str(parked.id)}
    ).result_rows
    assert parked_at is not None


def _notes(client: Any, table: str, key: str, row_id: uuid.UUID) -> tuple[Any, Any] | None:
    """The row's description and metadata as stored, or None while the row is not there yet."""
    rows = client.query(
        f"SELECT description, metadata FROM audit.{table} FINAL WHERE {key} = {{id:UUID}}",  # noqa: S608
        parameters={"id": str(row_id)},
    ).result_rows
    if not rows:
        return None
    [(description, metadata)] = rows
    return description, None if metadata is None else json.loads(metadata)


def test_descriptions_and_metadata_reach_the_store_by_snapshot_and_by_stream_and_reconcile(cdc: CdcProcess) -> None:
    """Copied by the first snapshot (psycopg would turn jsonb into a dict) and streamed (as text):
    the same text either way, hashed alike on both sides."""
    owner, _ = make_client()
    notes = {"order": "A-1|2:x~", "clé": '€ "quoted"', "empty": ""}
    before = wallet_create(owner_id=owner.id, currency="USD", description="snapshot ünïcode", metadata=notes)
    wallet_fund(wallet_id=before.id, amount_minor=1_000, reference="seed")
    payee = make_wallet(owner, shard="shard_01")
    sent = create_transfer(owner, before, payee.id, 5, description="rent", metadata={"n": "1"})
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "catch-up")
    wait_until(lambda: _notes(client, "wallets", "wallet_id", before.id) is not None, 20, "the wallets' snapshot")
    assert _notes(client, "wallets", "wallet_id", before.id) == ("snapshot ünïcode", notes)
    assert _notes(client, "wallets", "wallet_id", payee.id) == (None, None)
    assert _notes(client, "transfers", "transfer_id", sent.id) == ("rent", {"n": "1"})

    after = wallet_create(owner_id=owner.id, currency="USD", description="streamed", metadata={"k": "v"})
    wallet_update(wallet_id=payee.id, owner_id=owner.id, changes=WalletChanges(metadata={"tier": "gold"}))
    # No entry or transition comes with either change, so caught_up cannot tell they arrived:
    # the wallet rows themselves are waited for.
    wait_until(
        lambda: (
            _notes(client, "wallets", "wallet_id", after.id) is not None
            and _notes(client, "wallets", "wallet_id", payee.id) != (None, None)
        ),
        20,
        "the stream's catch-up",
    )
    assert _notes(client, "wallets", "wallet_id", after.id) == ("streamed", {"k": "v"})
    assert _notes(client, "wallets", "wallet_id", payee.id) == (None, {"tier": "gold"})
    report = reconcile(client, wait=15)
    assert report.ok, report.differences


@pytest.mark.parametrize("rows_per_store_query", [reconcile_module.ROWS_PER_STORE_QUERY, 2])
def test_a_row_changed_behind_the_cdcs_back_is_named_with_its_bucket(
    cdc: CdcProcess, monkeypatch: pytest.MonkeyPatch, rows_per_store_query: int
) -> None:
    """Whether the store's tables are read whole or in many ranges of their keys."""
    monkeypatch.setattr(reconcile_module, "ROWS_PER_STORE_QUERY", rows_per_store_query)
    owner, _ = make_client()
    changed = make_wallet(owner, funded=1_000, shard="shard_00")
    untouched = make_wallet(owner, funded=1_000, shard="shard_01")
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "catch-up")
    assert reconcile(client, wait=10).ok
    bucket = bucket_of(changed.id)

    # The mover's replication origin: the CDC skips the transaction, the store never sees it.
    with mover_session("shard_00") as conn:
        conn.execute("UPDATE ledger_wallet SET balance_minor = balance_minor + 7 WHERE id = %s", [changed.id])

    report = reconcile(client, wait=10)
    assert not report.ok
    assert report.attempts == 2  # it differed twice before it was reported
    assert f"bucket {bucket} on shard_00, wallets: 1 row(s) summing 1007 on the shard, 1 row(s) summing 1000" \
        " in the audit store" in report.differences  # fmt: skip
    assert f"wallet {changed.id} (bucket {bucket} on shard_00): balance_minor is 1007 on the shard, 1000 in the" \
        " audit store" in report.differences  # fmt: skip
    assert not any(
        str(untouched.id) in line or f"bucket {bucket_of(untouched.id)} " in line for line in report.differences
    )
    out = StringIO()
    with pytest.raises(CommandError, match="difference"):
        call_command("reconcile", "--port", str(cdc.port), "--wait", "10", stdout=out)
    assert f"wallet {changed.id} (bucket {bucket} on shard_00): balance_minor is 1007" in out.getvalue()
    # Reconciling changed neither side.
    assert raw_query("shard_00", "SELECT balance_minor FROM ledger_wallet WHERE id = %s", [changed.id]) == [(1007,)]
    [(in_store,)] = client.query(
        "SELECT balance_minor FROM audit.wallets FINAL WHERE wallet_id = {id:UUID}", parameters={"id": str(changed.id)}
    ).result_rows
    assert in_store == 1000


def test_a_row_only_the_store_holds_and_a_row_it_lacks_are_both_named(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    wallet = make_wallet(owner, funded=1_000, shard="shard_01")
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "catch-up")
    [(entry_id,)] = raw_query("shard_01", "SELECT id FROM ledger_entry WHERE wallet_id = %s", [wallet.id])
    bucket = bucket_of(wallet.id)
    # A deposit the store never hears of; and an entry of the same bucket only the store holds.
    unseen_entry("shard_01", entry_id, seq=2, balance_after=1005)
    ghost = uuid.UUID(int=entry_id.int + 2)
    write_store(
        cdc,
        f"INSERT INTO audit.ledger_entries SELECT shard, toUUID('{ghost}'), wallet_id, 3, 'ghost', kind,"  # noqa: S608
        " amount_minor, balance_after_minor, created_at, commit_lsn, seq, commit_time, version, is_deleted"
        f" FROM audit.ledger_entries WHERE entry_id = toUUID('{entry_id}')",
        env=FAST,
    )
    client = cdc.client()

    report = reconcile(client, wait=10)
    assert not report.ok
    lines = report.differences
    assert f"entry {uuid.UUID(int=entry_id.int + 1)} (bucket {bucket} on shard_01) is on the shard but not in the" \
        " audit store" in lines  # fmt: skip
    assert f"entry {ghost} (bucket {bucket} on shard_01) is in the audit store but not on the shard" in lines
    assert not any(str(entry_id) in line for line in lines)  # the entry both hold is not reported
    assert [line for line in lines if line.startswith("bucket ")] == [
        f"bucket {bucket} on shard_01, entries: 2 row(s) summing 1005 on the shard, 2 row(s) summing 2000 in the"
        " audit store"
    ]


@pytest.mark.parametrize("transfers_per_check", [reconcile_module.TRANSFERS_PER_CHECK, 1])
def test_the_transfer_check_catches_a_completed_transfer_without_its_credit(
    cdc: CdcProcess, monkeypatch: pytest.MonkeyPatch, transfers_per_check: int
) -> None:
    """Whether the transfers are paired all at once or in many ranges of their ids."""
    monkeypatch.setattr(reconcile_module, "TRANSFERS_PER_CHECK", transfers_per_check)
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1_000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    other = make_wallet(owner, shard="shard_01")
    broken = transfer_advance(create_transfer(owner, payer, payee.id, 300).id)
    fine = transfer_advance(create_transfer(owner, payer, other.id, 200).id)
    assert (broken.status, fine.status) == ("completed", "completed")
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "catch-up")
    assert reconcile(client, wait=10).ok
    assert query_rows(cdc, "transfer_pairing") == []

    # The credit goes, on the shard and (streamed) in the store: both sides agree, the pairing does not.
    raw_query("shard_01", "DELETE FROM ledger_entry WHERE reference = %s AND kind = 'credit'", [str(broken.id)])
    wait_until(lambda: caught_up(client), 20, "the deletion streamed")

    report = reconcile(client, wait=10)
    assert not report.ok
    problems = [line for line in report.differences if line.startswith("transfer ")]
    assert problems == [
        f"transfer {broken.id} (bucket {bucket_of(broken.id)} on shard_00) is completed (300 USD) but has 1 debit(s),"
        " 0 credit(s), 0 refund(s) in the audit store that do not make one debit of the amount on the payer and one"
        " credit of it on the payee"
    ]
    assert not any(str(fine.id) in line for line in report.differences)
    unpaired = query_rows(cdc, "transfer_pairing")
    assert [(r["transfer_id"], r["status"], r["debits"], r["credits"]) for r in unpaired] == [
        (str(broken.id), "completed", "1", "0")
    ]
    [usd] = query_rows(cdc, "conservation")
    assert (usd["completed_unpaired"], usd["paired"], usd["conserved"], usd["holds"]) == ("1", "0", "1", "0")


def test_the_store_counts_open_holds_in_conservation_and_lists_them(cdc: CdcProcess) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from apps.holds.services import HoldRequest, hold_capture, hold_create, hold_void, holds_expire_due

    owner, _ = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")

    def hold(amount: int) -> Any:
        request = HoldRequest(owner.id, payer.id, payee.id, amount, "USD", timezone.now() + timedelta(hours=1),
                              str(uuid.uuid4()))  # fmt: skip
        return hold_create(request).hold

    kept, voided, captured = hold(300), hold(100), hold(50)
    hold_void(voided.id, client_id=owner.id)
    transfer_advance(hold_capture(captured.id, client_id=owner.id, amount_minor=20).transfer_id)
    due = hold_create(
        HoldRequest(owner.id, payer.id, payee.id, 7, "USD", timezone.now() + timedelta(seconds=1), "soon")
    ).hold
    time.sleep(1.2)
    assert holds_expire_due("shard_00") == 1
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "catch-up")
    [usd] = query_rows(cdc, "conservation")
    assert (usd["held_minor"], usd["conserved"], usd["holds"]) == ("300", "1", "1")
    rows = query_rows(cdc, "open_holds")
    assert [(r["hold_id"], r["wallet_id"], r["amount_minor"]) for r in rows] == [(str(kept.id), str(payer.id), "300")]
    [expired] = query_rows(cdc, "expired_holds")
    assert (expired["hold_id"], expired["payer_id"], expired["amount_minor"]) == (str(due.id), str(payer.id), "7")
    assert 0 <= int(expired["ms_after_due"]) < 60_000
    assert reconcile(client, wait=10).ok


def test_the_store_links_refunds_to_their_originals_and_reconciles_them(cdc: CdcProcess) -> None:
    from apps.ledger.services import wallet_withdraw
    from apps.refunds.services import RefundRequest, refund_create
    from apps.transfers.api.views import render_transfer

    owner, _ = make_client()
    payer = make_wallet(owner, funded=1000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    original = transfer_advance(create_transfer(owner, payer, payee.id, 300).id)

    def refund(amount: int) -> Any:
        return refund_create(RefundRequest(owner.id, original.id, amount, str(uuid.uuid4())), render=render_transfer)

    done = refund(100)
    transfer_advance(done.refund.transfer_id)
    wallet_withdraw(wallet_id=payee.id, amount_minor=150, reference="spent")
    refused = refund(100)  # the payee has 50: refused, nothing moved, the reservation given back
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "catch-up")
    [row] = query_rows(cdc, "refunds", f"transfer={original.id}")
    assert (row["original_id"], row["original_amount"], row["amount_refunded"]) == (str(original.id), "300", "100")
    assert (row["refunded_completed"], row["refunding_now"], row["over"]) == ("100", "0", "0")
    assert str(done.refund.transfer_id) in row["refunds"]
    assert str(refused.refund.transfer_id) in row["refunds"]
    assert query_rows(cdc, "refunds", "transfer=" + str(uuid.uuid4())) == []
    assert reconcile(client, wait=10).ok
    # The link is compared like every column: a store that lost it differs.
    columns = ("shard, transfer_id, client_id, payer_id, payee_id, amount_minor, currency, status, failure_reason,"
               " attempts, parked_at, created_at, updated_at, refund_of, amount_refunded, commit_lsn, seq, commit_time,"
               " version, is_deleted")  # fmt: skip
    write_store(
        cdc,
        f"INSERT INTO audit.transfers ({columns}) SELECT {columns.replace('amount_refunded', '0')}"  # noqa: S608
        f" FROM audit.transfers FINAL WHERE transfer_id = toUUID('{original.id}')",
        env=FAST,
    )
    report = reconcile(cdc.client(), wait=10)
    assert not report.ok
    assert any("transfers" in line for line in report.differences), report.differences


HISTORY = 200_000  # deleted entries: read by every query of the table, counted by none


def store_reads(client: Any, marker: str) -> list[int]:
    """read_rows of the queries this test's auditor sent whose text holds `marker` (audit.query_log)."""
    result = client.query(
        "SELECT read_rows FROM audit.query_log WHERE position(query, {marker:String}) > 0 ORDER BY time",
        parameters={"marker": marker},
    )
    return [int(r) for (r,) in result.result_rows]


def test_pairing_in_ranges_and_drilling_read_the_store_once_not_once_per_range_or_page(
    cdc: CdcProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long history makes the entries table big: the transfer check pairs ranges of transfer
    ids through a table keyed by transfer, and a drill streams one query, so neither reads the
    whole entries table again per range of transfers or per page of rows."""
    monkeypatch.setattr(reconcile_module, "TRANSFERS_PER_CHECK", 2)
    monkeypatch.setattr(reconcile_module, "DRILL_CHUNK", HISTORY // 4)
    owner, _ = make_client()
    payer = make_wallet(owner, funded=10_000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    for _ in range(8):
        assert transfer_advance(create_transfer(owner, payer, payee.id, 10).id).status == "completed"
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "catch-up")
    # History in the payee's bucket, all of it deleted rows (a moved-away range's, say): in the
    # store's tables, in no fingerprint and no pairing.
    write_store(
        cdc,
        "INSERT INTO audit.ledger_entries SELECT 'shard_01', generateUUIDv4(number),"  # noqa: S608
        f" toUUID('{payee.id}'), 1000 + number, toString(generateUUIDv4(number + {HISTORY})), 'debit', -1, 0,"
        f" now64(6), 1, 0, now64(6), toUInt128(1), 1 FROM numbers({HISTORY})",
        env=FAST,
    )
    client = cdc.client()
    assert reconcile(client, wait=10).ok
    # An entry the store never hears of, in the payee's bucket: its entries are drilled into.
    [(entry_id,)] = raw_query("shard_01", "SELECT id FROM ledger_entry WHERE wallet_id = %s LIMIT 1", [payee.id])
    unseen = unseen_entry("shard_01", entry_id, seq=99, balance_after=85)
    report = reconcile(client, wait=10)
    assert not report.ok
    assert report.transfers == 8
    assert any(f"entry {unseen} " in line for line in report.differences)

    marker = "currency, debits, credits, refunds"
    pairing = wait_until(lambda: len(r := store_reads(client, marker)) >= 3 * 4 and r, 10, "the query log")
    drills = wait_until(lambda: store_reads(client, " AS t_0"), 10, "the query log")
    # Three rounds (one, then two) each pair their transfers in 4 ranges, each with that range's
    # entries only (plus the granules at its edges); the drill reads the entries table once.
    assert max(pairing) < HISTORY / 2, pairing
    assert sum(drills) < 1.5 * HISTORY, drills


def test_conservation_holds_with_money_in_flight_and_fails_without_a_deposit(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=10_000, shard="shard_00")
    payee = make_wallet(owner, funded=500, shard="shard_01")
    frozen = make_wallet(owner, shard="shard_01")
    wallet_set_status(wallet_id=frozen.id, status=WalletStatus.FROZEN)
    assert transfer_advance(create_transfer(owner, payer, payee.id, 1_000).id).status == "completed"
    assert transfer_advance(create_transfer(owner, payer, frozen.id, 700).id).status == "failed"
    in_flight = create_transfer(owner, payer, payee.id, 250)  # no worker: it waits, debited
    assert in_flight.status == "debited"
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "catch-up")

    [usd] = query_rows(cdc, "conservation")
    assert usd == {
        "currency": "USD", "wallets": "3", "balances_minor": "10250", "deposits_minor": "10500",
        "withdrawals_minor": "0", "in_flight_minor": "250", "held_minor": "0", "expected_balances_minor": "10250",
        "conserved": "1",
        "completed_transfers": "1", "completed_unpaired": "0", "failed_transfers": "1", "failed_unpaired": "0",
        "paired": "1", "holds": "1",
    }  # fmt: skip

    # The payee's deposit leaves the store (deleted on the shard, streamed): the balances no
    # longer follow from what the store says came in.
    raw_query("shard_01", "DELETE FROM ledger_entry WHERE wallet_id = %s AND kind = 'deposit'", [payee.id])
    wait_until(lambda: caught_up(client), 20, "the deletion streamed")
    [usd] = query_rows(cdc, "conservation")
    assert (usd["deposits_minor"], usd["expected_balances_minor"]) == ("10000", "9750")
    assert (usd["conserved"], usd["paired"], usd["holds"]) == ("0", "1", "0")


def test_a_gap_recorded_by_a_resnapshot_is_a_warning_and_the_shard_still_agrees(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    kept = make_wallet(owner, funded=500, shard="shard_00")
    gone = make_wallet(owner, funded=700, shard="shard_00")
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "the first changes")
    cdc.stop()
    assert drop_slot(settings.SHARD_MAP.shards["shard_00"], cdc.slot)
    # While nobody reads: a wallet vanishes behind the CDC's back, another is added; the
    # stream cannot know, the re-snapshot sees the result.
    raw_query("shard_00", "DELETE FROM ledger_entry WHERE wallet_id = %s", [gone.id])
    raw_query("shard_00", "DELETE FROM ledger_wallet WHERE id = %s", [gone.id])
    make_wallet(owner, funded=300, shard="shard_00")
    cdc.start(env=FAST, wait=False)
    cdc.wait_connected(["shard_01"])
    call_command("cdc_resnapshot", "shard_00", "--reason", "slot dropped in a test", "--by", "tester", "--wait", "60",
                 stdout=StringIO())  # fmt: skip
    cdc.wait_connected()
    wait_until(lambda: caught_up(client), 20, "the re-snapshot")
    wallet_fund(wallet_id=kept.id, amount_minor=1, reference="after-the-gap")

    report = reconcile(client, wait=15)
    assert report.ok, report.differences
    assert report.wallets >= 2
    [gap] = report.gaps
    assert (gap.shard, gap.cause, gap.resolution, gap.detail) == ("shard_00", "slot_missing", "resnapshot",
                                                                 "slot dropped in a test")  # fmt: skip
    assert gap.from_lsn < gap.to_lsn
    out, err = StringIO(), StringIO()
    call_command("reconcile", "--port", str(cdc.port), "--wait", "15", stdout=out, stderr=err)
    assert "reconcile: OK" in out.getvalue()
    assert err.getvalue().startswith(
        f"warning: history is incomplete: shard_00: WAL {lsn_to_str(gap.from_lsn)} to {lsn_to_str(gap.to_lsn)} was"
        " never read (slot_missing, resnapshot, recorded "
    )
    assert err.getvalue().rstrip().endswith("UTC): slot dropped in a test")


def test_a_bucket_moving_during_the_comparison_is_compared_once_it_has_moved(cdc: CdcProcess) -> None:
    """A bucket served by no shard (fenced on its source, not yet owned by its target) is looked at
    again in a later round, on its new shard."""
    bucket = 303
    owner, _ = make_client()
    wallet = wallet_create(owner_id=owner.id, currency="USD", bucket=bucket)
    wallet_fund(wallet_id=wallet.id, amount_minor=900, reference="before-the-move")
    cdc.start(env=FAST)
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "catch-up")
    try:
        copy_bucket("shard_00", "shard_01", bucket)
        epoch = control_epoch() + 1
        fence("shard_00", "shard_01", bucket, epoch)
        owned = threading.Timer(1.5, own, args=("shard_00", "shard_01", bucket, epoch))
        owned.start()
        started = time.monotonic()
        report = reconcile(client, wait=10)
        owned.join()
        assert report.ok, report.differences
        assert report.attempts >= 2
        assert time.monotonic() - started >= 1.0
    finally:
        restore_buckets([bucket])
