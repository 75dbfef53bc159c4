"""Change data capture end to end: real PostgreSQL shards, a real `run_cdc` process, real chDB."""

from __future__ import annotations

import contextlib
import json
import random
import string
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from io import StringIO
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from apps.audit.reconcile import reconcile
from apps.ledger.models import WalletStatus
from apps.ledger.services import wallet_fund, wallet_set_status, wallet_withdraw
from apps.sharding.devstack import Devstack, PostgresCluster
from apps.sharding.ids import bucket_of
from apps.transfers.saga import transfer_advance
from apps.transfers.services import transfer_park, transfer_redrive
from tests.audit.cdc import CdcProcess, wait_until
from tests.audit.helpers import caught_up, count, shard_entries, store_entries, store_transitions
from tests.factories import ALL_DATABASES, create_transfer, make_client, make_wallet, raw_query
from tests.workers import flush_redis

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]


def transfer(owner: Any, payer: Any, payee_id: uuid.UUID, amount: int) -> Any:
    """Create a transfer and run its saga to the end in this process (no Celery needed)."""
    return transfer_advance(create_transfer(owner, payer, payee_id, amount).id)


def money_movements(owner: Any) -> dict[str, Any]:
    """Deposits, a withdrawal and every kind of transfer outcome, over both shards."""
    a = make_wallet(owner, funded=10_000, shard="shard_00")
    b = make_wallet(owner, funded=300, shard="shard_01")
    c = make_wallet(owner, shard="shard_00")
    frozen = make_wallet(owner, shard="shard_01")
    wallet_set_status(wallet_id=frozen.id, status=WalletStatus.FROZEN)
    return {
        "wallets": (a, b, c, frozen),
        "cross_shard": transfer(owner, a, b.id, 1_000),
        "same_shard": transfer(owner, a, c.id, 500),
        "insufficient": transfer(owner, c, a.id, 1_000_000),
        "refunded": transfer(owner, a, frozen.id, 700),
        "withdrawal": wallet_withdraw(wallet_id=a.id, amount_minor=100, reference=f"w-{uuid.uuid4()}"),
    }


def run(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


def test_the_store_holds_exactly_the_shards_entries_and_every_transition(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    earlier = make_wallet(owner, funded=5_000, shard="shard_01")  # before the CDC: the initial snapshot copies it
    cdc.start()
    client = cdc.client()
    moves = money_movements(owner)
    assert {moves[k].status for k in ("cross_shard", "same_shard")} == {"completed"}
    assert (moves["insufficient"].status, moves["refunded"].status) == ("failed", "failed")

    wait_until(lambda: caught_up(client, once=True), 20, "the audit store to hold every entry and transition, once")
    ours = {str(w.id) for w in (earlier, *moves["wallets"])}
    assert len([e for e in store_entries(client) if str(e[2]) in ours]) == 10

    timeline = sorted(
        (row[2], row[3], row[4], row[5]) for row in store_transitions(client) if row[1] == moves["refunded"].id
    )
    assert [t[1:] for t in timeline] == [
        (None, "pending", None),
        ("pending", "debited", None),
        ("debited", "refunding", "payee_frozen"),
        ("refunding", "failed", None),
    ]
    assert (
        count(
            client,
            "SELECT count() FROM audit.changes FINAL WHERE op = 'snapshot' AND table_name = 'ledger_wallet'"
            " AND JSONExtractString(new_row, 'id') = {id:String}",
            {"id": str(earlier.id)},
        )
        == 1
    )

    report = reconcile(client, wait=15)
    assert report.ok, report.differences
    assert "reconcile: OK" in run("reconcile", "--port", str(cdc.port), "--wait", "15")

    # The named queries answer as documented.
    payer = moves["wallets"][0]
    history = run("audit_query", "wallet_history", "--param", f"wallet={payer.id}", "--port", str(cdc.port))
    assert history.strip().endswith("(6 rows)")
    assert all(line.rstrip().endswith("| 1") for line in history.splitlines()[2:-1]), history
    timeline_out = run("audit_query", "transfer_timeline", "--param", f"transfer={moves['refunded'].id}",
                       "--port", str(cdc.port))  # fmt: skip
    assert "payee_frozen" in timeline_out
    assert timeline_out.strip().endswith("(4 rows)")
    [(total,)] = client.query("SELECT sum(balance_minor) FROM audit.wallets FINAL WHERE is_deleted = 0").result_rows
    assert total == sum(
        r[0] for a in ("shard_00", "shard_01") for r in raw_query(a, "SELECT balance_minor FROM ledger_wallet")
    )
    conservation = run("audit_query", "conservation", "--port", str(cdc.port)).splitlines()
    usd = [c.strip() for c in conservation[2].split("|")]
    header = [c.strip() for c in conservation[0].split("|")]
    row = dict(zip(header, usd, strict=True))
    assert (row["currency"], row["balances_minor"], row["conserved"], row["paired"], row["holds"]) == (
        "USD", str(total), "1", "1", "1",
    )  # fmt: skip
    assert (row["completed_transfers"], row["failed_transfers"]) == ("2", "2")
    assert (
        run("audit_query", "stuck_transfers", "--param", "older_than_seconds=0", "--port", str(cdc.port))
        .strip()
        .endswith("(0 rows)")
    )
    assert "USD" in run("audit_query", "daily_volume", "--port", str(cdc.port))
    assert str(total) in run(
        "audit_sql", "SELECT sum(balance_minor) FROM audit.wallet_balances", "--port", str(cdc.port)
    )

    # Caught up: no lag once the last write's position is confirmed (a heartbeat may be on its way).
    status = wait_until(
        lambda: (s := cdc.status()) and {x["lag_seconds"] for x in s["shards"].values()} == {0.0} and s,
        10,
        "no lag on any shard",
    )
    assert all(s["changes_written"] > 0 for s in status["shards"].values())


def test_a_sigkilled_reader_resumes_without_a_gap_or_a_duplicate(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    payers = [make_wallet(owner, funded=1_000_000, shard=s) for s in ("shard_00", "shard_01")]
    payees = [make_wallet(owner, shard=s) for s in ("shard_00", "shard_01")]
    ours = [w.id for w in (*payers, *payees)]
    cdc.start()
    first_pid = cdc.process.pid if cdc.process else None
    killed = threading.Event()
    sent: list[int] = []
    errors: list[BaseException] = []

    def stream() -> None:
        # Transfers go on until 20 of them have been made after the kill: the kill always
        # lands in the middle of the stream, however fast or slow the machine.
        try:
            after_kill = 0
            for i in range(2_000):
                transfer(owner, payers[i % 2], payees[(i // 2) % 2].id, 100 + i)
                sent.append(i)
                after_kill += killed.is_set()
                if after_kill >= 20:
                    return
            raise AssertionError("the reader was never killed")
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)
        finally:
            connections.close_all()

    def our_entries_on_the_shards() -> int:
        return sum(
            raw_query(alias, "SELECT count(*) FROM ledger_entry WHERE wallet_id = ANY(%s)", [ours])[0][0]
            for alias in ("shard_00", "shard_01")
        )

    writer = threading.Thread(target=stream)
    writer.start()
    wait_until(lambda: (s := cdc.status()) and sum(x["changes_written"] for x in s["shards"].values()) > 20, 30,
               "some changes written")  # fmt: skip
    cdc.kill()  # SIGKILL
    entries_at_kill = our_entries_on_the_shards()
    writer_was_running = writer.is_alive()
    killed.set()
    confirmed = cdc.confirmed_positions()  # what the server will send again: everything from here on
    cdc.start()
    writer.join(timeout=120)
    assert not writer.is_alive()
    assert not errors, errors
    client = cdc.client()
    wait_until(lambda: caught_up(client), 30, "the restarted reader to catch up")
    assert cdc.process is not None
    assert cdc.process.pid != first_pid

    # Mid-stream: the writer had written some, not all, of its entries when the reader died.
    total = 2 + 2 * len(sent)  # two deposits, a debit and a credit per transfer
    assert our_entries_on_the_shards() == total
    assert writer_was_running
    assert 2 < entries_at_kill < total

    # Every entry is in the typed table, once (FINAL collapses by the sort key; grouping by the
    # entry id alone would still see one stored under two keys).
    entries = client.query(
        "SELECT entry_id, wallet_id FROM audit.ledger_entries FINAL WHERE is_deleted = 0"
    ).result_rows
    assert len(entries) == len({e[0] for e in entries}) == len(shard_entries())
    assert len([e for e in entries if e[1] in set(ours)]) == total

    # Without FINAL: each entry was captured at exactly one stream position. A replay writes the
    # same position again (ReplacingMergeTree collapses it); a second position would be the same
    # row captured twice (say, a second snapshot), which no FINAL hides in the change log.
    positions_per_entry = client.query(
        "SELECT JSONExtractString(new_row, 'id') AS entry, uniqExact(shard, commit_lsn, seq) AS positions"
        " FROM audit.changes WHERE table_name = 'ledger_entry' AND op IN ('insert', 'snapshot')"
        " GROUP BY entry"
    ).result_rows
    assert len(positions_per_entry) == len(shard_entries())
    assert {n for _, n in positions_per_entry} == {1}

    # Without FINAL: a position is held twice only if the killed reader had written it without
    # confirming it (until a merge folds the copies); nothing confirmed before the kill came again.
    copies = client.query(
        "SELECT shard, commit_lsn, seq, count() AS copies FROM audit.changes"
        " GROUP BY shard, commit_lsn, seq HAVING copies > 1"
    ).result_rows
    assert [c for c in copies if c[3] > 2 or c[1] < confirmed[c[0]]] == []

    # The restarted reader wrote each change from the confirmed position on exactly once:
    # its own count (merge-proof, unlike the copies above) is the number of those positions.
    def written_from_confirmed() -> dict[str, int]:
        return {
            alias: count(
                client,
                "SELECT uniqExact(commit_lsn, seq) FROM audit.changes"
                " WHERE shard = {shard:String} AND commit_lsn >= {lsn:UInt64}",
                {"shard": alias, "lsn": lsn},
            )
            for alias, lsn in confirmed.items()
        }

    def written_by_the_restarted_reader() -> dict[str, int]:
        status = cdc.status()
        return {alias: s["changes_written"] for alias, s in status["shards"].items()} if status else {}

    expected = written_from_confirmed()
    assert sum(expected.values()) > 0
    with contextlib.suppress(AssertionError):  # its status file is rewritten every second
        wait_until(lambda: written_by_the_restarted_reader() == expected, 10, "the reader's status")
    assert written_by_the_restarted_reader() == expected
    report = reconcile(client, wait=15)
    assert report.ok, report.differences


def test_a_batch_written_but_not_confirmed_is_sent_again_and_collapses(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    wallet = make_wallet(owner, shard="shard_00")
    marker = cdc.dir / "crash-after-write"
    marker.touch()
    cdc.start(env={"SHARDWALLET_CRASH_AT": f"cdc_after_sink_write:{marker}"})
    wallet_fund(wallet_id=wallet.id, amount_minor=4_200, reference="replayed")
    assert cdc.wait_exit(timeout=30) != 0  # killed itself right after the insert, before confirming
    assert not marker.exists()

    cdc.start()
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "the replayed transaction")
    # The status file is rewritten every second: wait for the one that counts the replay.
    wait_until(
        lambda: ((cdc.status() or {}).get("shards", {}).get("shard_00", {}).get("changes_written", 0)) >= 2,
        20, "the unconfirmed transaction to come again",
    )  # fmt: skip
    entry = {"id": str(wallet.id)}
    assert count(client, "SELECT count() FROM audit.ledger_entries FINAL WHERE wallet_id = {id:UUID}", entry) == 1
    written = count(
        client,
        "SELECT count() FROM audit.changes WHERE table_name = 'ledger_entry'"
        " AND JSONExtractString(new_row, 'wallet_id') = {id:String}",
        entry,
    )
    deduplicated = count(
        client,
        "SELECT count() FROM audit.changes FINAL WHERE table_name = 'ledger_entry'"
        " AND JSONExtractString(new_row, 'wallet_id') = {id:String}",
        entry,
    )
    assert deduplicated == 1
    assert written >= 1  # 2 until ClickHouse merges the parts; FINAL never shows the copy
    assert reconcile(client, wait=15).ok


@pytest.fixture
def shard_01(devstack: Devstack) -> Iterator[PostgresCluster]:
    cluster = next(c for c in devstack.clusters() if c.server.alias == "shard_01")
    yield cluster
    if not cluster.is_running():
        cluster.start()
    connections["shard_01"].close()


def test_the_reader_reconnects_after_a_shard_restart_and_catches_up(cdc: CdcProcess, shard_01: PostgresCluster) -> None:
    owner, _ = make_client()
    w0 = make_wallet(owner, funded=100, shard="shard_00")
    w1 = make_wallet(owner, funded=100, shard="shard_01")
    cdc.start()
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "the first catch-up")

    shard_01.stop()
    wait_until(lambda: (s := cdc.status()) and not s["shards"]["shard_01"]["connected"], 20, "shard_01 disconnected")
    wallet_fund(wallet_id=w0.id, amount_minor=11, reference="while-shard-01-is-down")  # shard_00 keeps streaming
    wait_until(lambda: count(client, "SELECT count() FROM audit.ledger_entries FINAL WHERE wallet_id = {id:UUID}",
                             {"id": str(w0.id)}) == 2, 20, "shard_00's entry")  # fmt: skip

    shard_01.start()
    connections["shard_01"].close()
    wallet_fund(wallet_id=w1.id, amount_minor=22, reference="after-the-restart")
    cdc.wait_connected(timeout=60)
    wait_until(lambda: caught_up(client), 30, "shard_01 to catch up")
    status = cdc.status()
    assert status is not None
    assert status["shards"]["shard_01"]["reconnects"] >= 1
    assert reconcile(client, wait=15).ok


def test_updates_and_deletes_carry_the_old_row_and_money_stays_exact(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    big = 2**62 + 12_345
    wallet = make_wallet(owner, shard="shard_00")
    doomed = make_wallet(owner, shard="shard_01")
    cdc.start()
    client = cdc.client()
    wallet_fund(wallet_id=wallet.id, amount_minor=big, reference="big")
    wallet_withdraw(wallet_id=wallet.id, amount_minor=1, reference="one")
    raw_query("shard_01", "DELETE FROM ledger_wallet WHERE id = %s", [doomed.id])  # no entries: deletable

    def wallet_changes(wallet_id: uuid.UUID) -> list[tuple[Any, ...]]:
        return client.query(
            "SELECT op, old_row, new_row FROM audit.changes FINAL WHERE table_name = 'ledger_wallet'"
            " AND op != 'snapshot' AND JSONExtractString(coalesce(new_row, old_row), 'id') = {id:String}"
            " ORDER BY commit_lsn, seq",
            parameters={"id": str(wallet_id)},
        ).result_rows

    wait_until(lambda: len(wallet_changes(wallet.id)) == 2 and len(wallet_changes(doomed.id)) == 1, 20, "changes")
    (op1, old1, new1), (op2, old2, new2) = wallet_changes(wallet.id)
    assert (op1, op2) == ("update", "update")
    assert json.loads(old1)["balance_minor"] == 0
    assert json.loads(new1)["balance_minor"] == big
    assert json.loads(old2)["balance_minor"] == big
    assert json.loads(new2)["balance_minor"] == big - 1
    assert json.loads(old2)["currency"] == "USD"  # the whole old row, not just the key
    [(op, old, new)] = wallet_changes(doomed.id)
    assert (op, new) == ("delete", None)
    assert json.loads(old)["id"] == str(doomed.id)
    assert json.loads(old)["status"] == "active"

    [(balance, entries_sum, from_json)] = client.query(
        "SELECT b.balance_minor, b.entries_sum_minor, JSONExtractInt(c.old_row, 'balance_minor')"
        " FROM audit.wallet_balances AS b, (SELECT old_row FROM audit.changes FINAL WHERE table_name = 'ledger_wallet'"
        " AND JSONExtractString(old_row, 'id') = {id:String} ORDER BY commit_lsn DESC LIMIT 1) AS c"
        " WHERE b.wallet_id = {id:UUID}",
        parameters={"id": str(wallet.id)},
    ).result_rows
    assert (balance, entries_sum, from_json) == (big - 1, big - 1, big)
    assert type(balance) is int
    assert count(client, "SELECT count() FROM audit.wallet_balances WHERE wallet_id = {id:UUID}",
                 {"id": str(doomed.id)}) == 0  # fmt: skip
    assert count(client, "SELECT is_deleted FROM audit.wallets FINAL WHERE wallet_id = {id:UUID}",
                 {"id": str(doomed.id)}) == 1  # fmt: skip
    assert reconcile(client, wait=15).ok


def test_an_update_that_leaves_a_toasted_value_alone_streams_it_from_the_old_row(cdc: CdcProcess) -> None:
    # pgoutput does not resend an out-of-line value an update left alone; the whole old row
    # (REPLICA IDENTITY FULL, on every audited table of every shard) is where it comes from.
    for alias in ("shard_00", "shard_01"):
        identities = raw_query(
            alias, "SELECT relname, relreplident FROM pg_class WHERE relname = ANY(%s)", [settings.AUDIT_TABLES]
        )
        assert sorted(identities) == sorted((table, "f") for table in settings.AUDIT_TABLES)

    def toast_rows() -> int:
        [(toast,)] = raw_query(
            "shard_00", "SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'transfers_transfer'"
        )
        return raw_query("shard_00", f"SELECT count(*) FROM {toast}")[0][0]  # noqa: S608 - a catalog name

    owner, _ = make_client()
    payer = make_wallet(owner, funded=1_000, shard="shard_00")
    payee = make_wallet(owner, shard="shard_01")
    parked = create_transfer(owner, payer, payee.id, 100)
    error = "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=2_000))  # incompressible
    chunks_before = toast_rows()
    assert transfer_park(parked.id, error)
    assert toast_rows() > chunks_before, "the premise: last_error is stored out of line"
    cdc.start()
    client = cdc.client()

    assert transfer_redrive(parked.id)  # parked_at, attempts and updated_at change; last_error does not
    flush_redis()  # the re-drive's message: no worker runs here

    def redrive_change() -> list[tuple[Any, ...]]:
        return client.query(
            "SELECT old_row, new_row FROM audit.changes FINAL WHERE table_name = 'transfers_transfer'"
            " AND op = 'update' AND JSONExtractString(new_row, 'id') = {id:String}",
            parameters={"id": str(parked.id)},
        ).result_rows

    [(old, new)] = wait_until(redrive_change, 20, "the re-drive's update in the audit store")
    old_row, new_row = json.loads(old), json.loads(new)
    assert old_row["parked_at"] is not None
    assert new_row["parked_at"] is None
    assert new_row["last_error"] == old_row["last_error"] == error
    status = cdc.status()
    assert status is not None
    assert status["shards"]["shard_00"]["reconnects"] == 0
    assert reconcile(client, wait=15).ok


def _http(port: int, method: str, query: str = "", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    url = f"http://127.0.0.1:{port}/" + (f"?{urllib.parse.urlencode({'query': query})}" if query else "")
    login = settings.AUDIT_LOGIN
    request = urllib.request.Request(
        url, data=body, method=method, headers={"X-ClickHouse-User": login.user, "X-ClickHouse-Key": login.password}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_the_auditor_endpoint_answers_clickhouse_connect_and_refuses_writes(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    make_wallet(owner, funded=250, shard="shard_00")
    cdc.start()
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "catch-up")
    assert client.query("SELECT sum(balance_minor) AS total FROM audit.wallet_balances").result_rows == [(250,)]
    changes_before = count(client, "SELECT count() FROM audit.changes")

    row = ["x", 1, 1, 1, datetime.now(tz=UTC), "ledger_entry", "insert", None, "{}"]
    columns = ["shard", "commit_lsn", "seq", "xid", "commit_time", "table_name", "op", "old_row", "new_row"]
    with pytest.raises(DatabaseError, match="164"):
        client.insert("audit.changes", [row], column_names=columns)
    for statement in (
        "INSERT INTO audit.changes (shard, commit_lsn, seq) VALUES ('x', 1, 1)",
        "DROP TABLE audit.ledger_entries",
        "ALTER TABLE audit.wallets DELETE WHERE 1",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        "SET readonly = 0",
    ):
        with pytest.raises(DatabaseError, match="READONLY"):
            client.command(statement)
    assert count(client, "SELECT count() FROM audit.changes") == changes_before
    assert count(client, "SELECT count() FROM audit.changes WHERE shard = 'x'") == 0
    assert count(client, "SELECT count() FROM audit.ledger_entries") >= 1

    # What curl sends: a GET with ?query=, a POST body, in any FORMAT ClickHouse knows.
    assert _http(cdc.port, "GET", "SELECT 1 + 1")[::2] == (200, b"2\n")
    status, _, body = _http(
        cdc.port, "POST", body=b"SELECT sum(balance_minor) AS t FROM audit.wallets FINAL FORMAT JSONEachRow"
    )
    assert (status, json.loads(body)) == (200, {"t": 250})
    status, headers, body = _http(cdc.port, "POST", body=b"DROP TABLE audit.changes")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "164")
    assert _http(cdc.port, "GET", "SELEKT 1")[0] == 400
    assert _http(cdc.port, "GET")[::2] == (200, b"Ok.\n")


def test_reconcile_reports_a_real_difference(cdc: CdcProcess) -> None:
    owner, _ = make_client()
    w0 = make_wallet(owner, funded=1_000, shard="shard_00")
    w1 = make_wallet(owner, funded=1_000, shard="shard_01")
    cdc.start()
    client = cdc.client()
    wait_until(lambda: caught_up(client), 20, "catch-up")
    assert reconcile(client, wait=15).ok

    # Follow shard_00 only: a deposit on shard_01 never reaches the store.
    cdc.stop()
    # Heartbeats twice a second: the idle shard_00's position passes every point within the wait.
    cdc.start("--shard", "shard_00", env={"SHARDWALLET_AUDIT_HEARTBEAT_SECONDS": "0.5"}, wait=False)
    cdc.wait_connected(["shard_00"])
    client = cdc.client()
    store_before = store_entries(client)
    wallet_fund(wallet_id=w1.id, amount_minor=250, reference="unseen")

    report = reconcile(client, wait=3)
    assert not report.ok
    bucket = bucket_of(w1.id)
    assert report.differences[0].startswith("shard_01: after 3 s the audit store holds its WAL up to ")
    assert not any(line.startswith("shard_00") for line in report.differences)
    assert (
        f"bucket {bucket} on shard_01, entries: 2 row(s) summing 1250 on the shard, 1 row(s) summing 1000 in the"
        " audit store" in report.differences
    )
    assert any(
        line.startswith(f"wallet {w1.id} (bucket {bucket} on shard_01): balance_minor is 1250 on the shard, 1000 in"
                        " the audit store; last_entry_seq is 2 on the shard, 1 in the audit store")
        for line in report.differences
    )  # fmt: skip
    assert any(line.endswith("is on the shard but not in the audit store") for line in report.differences)
    assert not any(str(w0.id) in line or f"bucket {bucket_of(w0.id)} " in line for line in report.differences)
    out = StringIO()
    with pytest.raises(CommandError, match="difference"):
        call_command("reconcile", "--port", str(cdc.port), "--wait", "3", stdout=out)
    assert f"wallet {w1.id} (bucket {bucket} on shard_01): balance_minor is 1250" in out.getvalue()
    # Reconciling changed nothing on either side.
    assert store_entries(client) == store_before
    assert raw_query("shard_01", "SELECT balance_minor FROM ledger_wallet WHERE id = %s", [w1.id]) == [(1250,)]
