"""The auditors' surface, locked down: real shards, a real `run_cdc` process, real chDB.

Embedded mode: the endpoint lets in auditor accounts only, runs one read statement that
reads only the store, under limits the query cannot raise, a bounded number at a time,
and keeps a log of every query in the store. Server mode: the tools read with the auditor
DSN only. A heavy auditor query does not stall the change stream.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from apps.audit.auditors import Login
from apps.audit.store import AuditorAccessNotConfigured, AuditStoreUnavailable, connect_reader
from apps.ledger.services import wallet_fund
from tests.audit.cdc import CdcProcess
from tests.audit.helpers import caught_up, count
from tests.factories import ALL_DATABASES, free_port, make_client, make_wallet
from tests.polling import wait_until

pytestmark = [pytest.mark.django_db(transaction=True, databases=ALL_DATABASES), pytest.mark.slow]

ALICE = Login("alice", "alice-secret")
BOB = Login("bob", "bob-secret")  # configured by its SHA-256 only


def auditors_env(**limits: str) -> dict[str, str]:
    """The test stack's own account (the tools' login), alice in clear, bob hashed; the log flushed often."""
    accounts = ",".join(
        [
            os.environ["SHARDWALLET_AUDIT_AUDITORS"],
            f"{ALICE.user}:{ALICE.password}",
            f"{BOB.user}:sha256:{hashlib.sha256(BOB.password.encode()).hexdigest()}",
        ]
    )
    return {
        "SHARDWALLET_AUDIT_AUDITORS": accounts,
        "SHARDWALLET_AUDIT_QUERY_LOG_FLUSH_SECONDS": "0.2",
        **{f"SHARDWALLET_AUDIT_QUERY_{name.upper()}": value for name, value in limits.items()},
    }


def as_(login: Login, port: int, **kwargs: Any) -> Any:
    return clickhouse_connect.get_client(
        host="127.0.0.1", port=port, interface="http", username=login.user, password=login.password, **kwargs
    )


def basic(login: Login) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{login.user}:{login.password}".encode()).decode()}


def http(
    port: int,
    query: str = "",
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    path: str = "/",
) -> tuple[int, dict[str, str], bytes]:
    args = {**({"query": query} if query else {}), **(params or {})}
    url = f"http://127.0.0.1:{port}{path}" + (f"?{urllib.parse.urlencode(args)}" if args else "")
    request = urllib.request.Request(
        url, data=body, method="POST" if body is not None else "GET", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - our own endpoint
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def run(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


def logged(client: Any, marker: str) -> list[dict[str, Any]]:
    """audit.query_log's rows whose query text holds `marker`, oldest first."""
    result = client.query(
        "SELECT auditor, query, parameters, result_rows, read_rows, error_code, error, client_address,"
        " duration_ms, time FROM audit.query_log WHERE position(query, {marker:String}) > 0 ORDER BY time",
        parameters={"marker": marker},
    )
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def wait_logged(client: Any, marker: str, rows: int = 1) -> list[dict[str, Any]]:
    return wait_until(lambda: len(found := logged(client, marker)) >= rows and found, 10, f"{marker} in the log")


class CountingPort:
    """A port that counts the connections it gets and drops them: a client sent here fails at once,
    and the test sees that it came."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> CountingPort:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()


def test_no_query_runs_without_an_auditors_credentials(cdc: CdcProcess) -> None:
    cdc.start(env=auditors_env())
    marker = f"unauthenticated-{uuid.uuid4().hex}"
    query = f"SELECT '{marker}'"
    wrong = Login(ALICE.user, "not-her-secret")
    refused = {
        "no credentials": http(cdc.port, query),
        "a wrong password (basic auth)": http(cdc.port, query, headers=basic(wrong)),
        "an unknown user": http(cdc.port, query, headers=basic(Login("mallory", ALICE.password))),
        "a wrong key (X-ClickHouse headers)": http(
            cdc.port, query, headers={"X-ClickHouse-User": "alice", "X-ClickHouse-Key": "nope"}
        ),
        "a wrong password (URL parameters)": http(cdc.port, query, params={"user": "bob", "password": "nope"}),
        "a user but no secret": http(cdc.port, query, headers={"X-ClickHouse-User": "alice"}),
        "bob's digest as his password": http(
            cdc.port, query, headers=basic(Login("bob", f"sha256:{hashlib.sha256(b'bob-secret').hexdigest()}"))
        ),
        "two ways at once": http(cdc.port, query, headers=basic(ALICE), params={"user": "bob", "password": "x"}),
        "a POST body": http(cdc.port, body=query.encode(), headers=basic(wrong)),
        "not basic auth": http(cdc.port, query, headers={"Authorization": "Bearer alice-secret"}),
    }
    for how, (status, headers, body) in refused.items():
        assert (status, headers.get("X-ClickHouse-Exception-Code")) == (401, "516"), how
        assert b"AUTHENTICATION_FAILED" in body, how
        assert marker.encode() not in body, how
    assert b"needs an auditor's credentials" in refused["no credentials"][2]
    assert b"alice: Authentication failed" in refused["a wrong password (basic auth)"][2]
    with pytest.raises(DatabaseError, match="516"):
        as_(wrong, cdc.port).query(query)
    with override_settings(AUDIT_LOGIN=wrong), pytest.raises(AuditStoreUnavailable, match="SHARDWALLET_AUDIT_LOGIN"):
        connect_reader(cdc.port)

    # Health checks need no account; each way of logging in works with the right secret.
    assert http(cdc.port, path="/ping")[::2] == (200, b"Ok.\n")
    assert http(cdc.port, f"SELECT '{marker}-basic'", headers=basic(ALICE))[::2] == (200, f"{marker}-basic\n".encode())
    bobs = {"X-ClickHouse-User": "bob", "X-ClickHouse-Key": "bob-secret"}
    assert http(cdc.port, f"SELECT '{marker}-headers'", headers=bobs)[0] == 200
    assert http(cdc.port, f"SELECT '{marker}-params'", params={"user": "bob", "password": "bob-secret"})[0] == 200
    via_client = as_(ALICE, cdc.port).query(f"SELECT '{marker}-clickhouse-connect'").result_rows
    assert via_client == [(f"{marker}-clickhouse-connect",)]
    assert f"{marker}-tools" in run("audit_sql", f"SELECT '{marker}-tools'", "--port", str(cdc.port))

    # Nothing refused ran: the log holds every query that did (the later ones), none of the refused.
    rows = wait_logged(cdc.client(), marker, rows=5)
    assert [(r["auditor"], r["query"].split(marker)[1].split("'")[0]) for r in rows] == [
        ("alice", "-basic"),
        ("bob", "-headers"),
        ("bob", "-params"),
        ("alice", "-clickhouse-connect"),
        (settings.AUDIT_LOGIN.user, "-tools"),
    ]
    assert "refused a login" in cdc.log_text()
    assert ALICE.password not in cdc.log_text()
    assert "not-her-secret" not in cdc.log_text()


def test_writes_ddl_settings_table_functions_and_the_hosts_files_are_refused(cdc: CdcProcess, tmp_path: Path) -> None:
    owner, _ = make_client()
    make_wallet(owner, funded=100, shard="shard_00")
    cdc.start(env=auditors_env())
    client = as_(ALICE, cdc.port)
    wait_until(lambda: caught_up(client), 20, "catch-up")
    entries = count(client, "SELECT count() FROM audit.ledger_entries")
    shard = settings.SHARD_MAP.shards["shard_00"]
    outfile = tmp_path / "written-by-an-auditor"
    marker = f"refused-{uuid.uuid4().hex}"
    refused = [
        "INSERT INTO audit.ledger_entries (shard) VALUES ('x')",
        "DROP TABLE audit.ledger_entries",
        "TRUNCATE TABLE audit.ledger_entries",
        "ALTER TABLE audit.wallets DELETE WHERE 1",
        "CREATE TABLE audit.mine (a Int8) ENGINE = Memory",
        "CREATE TEMPORARY TABLE mine (a Int8)",
        "OPTIMIZE TABLE audit.changes FINAL",
        "SET max_execution_time = 1000",
        "SELECT 1 SETTINGS readonly = 0",
        "SYSTEM STOP MERGES",
        "KILL QUERY WHERE 1",  # would stop the CDC's own inserts
        "USE system",
        # Table functions that reach out of the store, each aimed at something that answers.
        f"SELECT * FROM postgresql('{shard.host}:{shard.port}', '{shard.name}', 'ledger_entry',"  # noqa: S608
        f" '{shard.user}', '{shard.password}')",
        f"SELECT * FROM url('http://127.0.0.1:{cdc.port}/ping', LineAsString)",  # noqa: S608
        "SELECT * FROM file('/etc/hostname', LineAsString)",
        "SELECT * FROM remote('127.0.0.1', system.one)",
        "SELECT * FROM executable('echo 1', TSV, 'a String')",
        "SELECT * FROM s3('http://127.0.0.1:1/x.csv', CSV, 'a String')",
        # What chDB's readonly=1 lets through: the file() function, INTO OUTFILE, python().
        "SELECT file('/etc/hostname')",
        "SELECT `file`('/proc/self/environ')",
        "SELECT * FROM (SELECT 1 AS a) WHERE a IN (SELECT length(file('/etc/hostname')))",
        f"SELECT 1 INTO OUTFILE '{outfile}'",
        "SELECT * FROM python(settings)",
    ]
    with CountingPort() as outside:
        # DESCRIBE of a table function skips readonly and reads the source for its structure.
        refused += [
            f"DESCRIBE TABLE url('http://127.0.0.1:{outside.port}/x.csv', CSVWithNames)",
            f"DESC remote('127.0.0.1:{outside.port}', system.one)",
            f"DESCRIBE postgresql('{shard.host}:{shard.port}', '{shard.name}', 'ledger_wallet', '{shard.user}',"
            f" '{shard.password}')",
            f"SELECT * FROM url('http://127.0.0.1:{outside.port}/x.csv', CSVWithNames)",  # noqa: S608
        ]
        for statement in refused:
            status, headers, body = http(cdc.port, f"{statement} -- {marker}", headers=basic(ALICE))
            assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "164"), (statement, body)
            assert b"READONLY" in body, statement
            with pytest.raises(DatabaseError, match="READONLY"):
                client.command(statement)
    assert outside.connections == 0
    with pytest.raises(DatabaseError, match="FUNCTION_NOT_ALLOWED"):
        client.query("SELECT addressToLine(toUInt64(1))")  # introspection: off, and readonly keeps it off
    # One statement per query, as ClickHouse's HTTP interface has it (chDB would run them all).
    status, headers, body = http(cdc.port, "SELECT 1; DROP TABLE audit.ledger_entries", headers=basic(ALICE))
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62")
    assert body.startswith(b"Code: 62. DB::Exception: Syntax error (Multi-statements are not allowed)"), body
    assert body.rstrip().endswith(b"(SYNTAX_ERROR)"), body
    # ... and nothing happened: the store is whole, no file was written, the stream still flows.
    assert not outfile.exists()
    assert count(client, "SELECT count() FROM audit.ledger_entries") == entries
    assert count(client, "SELECT count() FROM audit.ledger_entries WHERE shard = 'x'") == 0
    assert count(client, "SELECT count() FROM system.tables WHERE database = 'audit' AND name = 'mine'") == 0
    make_wallet(owner, funded=50, shard="shard_01")
    wait_until(lambda: caught_up(client), 20, "catch-up after the refusals")
    # Reading stays open: the store, its views, the system tables, EXPLAIN, SHOW, DESCRIBE.
    for statement in (
        "SELECT count() FROM audit.wallet_balances",
        "WITH 1 AS one SELECT one",
        "EXPLAIN SELECT 1",
        "SHOW TABLES FROM audit",
        "DESCRIBE TABLE audit.query_log",
        "EXISTS TABLE audit.changes",
        "SELECT count() FROM numbers(10)",
        "SELECT 'file(x) INTO OUTFILE' AS text_is_not_code",
        "DESCRIBE (SELECT 1 AS one)",
    ):
        assert http(cdc.port, statement, headers=basic(ALICE))[0] == 200, statement
    rows = wait_logged(client, marker, rows=len(refused))
    assert {r["error_code"] for r in rows} == {164}
    assert all(r["auditor"] == "alice" and r["result_rows"] == 0 for r in rows)


def test_each_query_limit_stops_a_query_past_it_and_no_query_can_raise_one(cdc: CdcProcess) -> None:
    cdc.start(env=auditors_env(max_seconds="1.5", max_memory_bytes=str(200 << 20), max_result_rows="5000"))
    client = as_(ALICE, cdc.port, query_retries=0)

    started = time.monotonic()
    with pytest.raises(DatabaseError, match="TIMEOUT_EXCEEDED"):
        client.query("SELECT sum(number) FROM numbers(100000000000)")
    assert time.monotonic() - started < 10
    with pytest.raises(DatabaseError, match="MEMORY_LIMIT_EXCEEDED"):
        # 10 KB a row: past 200 MB within some 20,000 rows, long before the time limit on a slow machine.
        client.query("SELECT length(groupArray(repeat('x', 10000))) FROM numbers(1000000)")
    with pytest.raises(DatabaseError, match="TOO_MANY_ROWS_OR_BYTES"):
        client.query("SELECT number FROM numbers(100000)")
    assert len(client.query("SELECT number FROM numbers(5000)").result_rows) == 5000
    # One thread: the plan reads one stream ("NumbersRange 0"; two threads make it "NumbersRange x 2 0").
    assert client.query("SELECT getSetting('max_threads')").result_rows == [(1,)]
    pipeline = client.raw_query("EXPLAIN PIPELINE SELECT sum(number) FROM numbers_mt(1000000000)").decode()
    assert "NumbersRange 0" in pipeline, pipeline

    # A query cannot lift a limit: not by SET, not by SETTINGS, not by the URL's settings.
    for attempt in ("SET max_result_rows = 0", "SELECT number FROM numbers(100000) SETTINGS max_result_rows = 0"):
        with pytest.raises(DatabaseError, match="READONLY"):
            client.query(attempt)
    status, _, body = http(
        cdc.port,
        "SELECT number FROM numbers(100000)",
        headers=basic(ALICE),
        params={"max_result_rows": "0", "readonly": "0", "max_execution_time": "0"},
    )
    assert status == 500
    assert b"TOO_MANY_ROWS_OR_BYTES" in body
    assert client.query("SELECT getSetting('max_execution_time'), getSetting('max_memory_usage')").result_rows == [
        (1.5, 200 << 20)
    ]


def test_queries_past_the_concurrency_bound_are_refused_at_once(cdc: CdcProcess) -> None:
    cdc.start(env=auditors_env(max_concurrent="2"))
    marker = f"slow-{uuid.uuid4().hex}"
    slow = f"SELECT sleepEachRow(0.25), '{marker}' FROM numbers(10) FORMAT Null"  # noqa: S608 - 2.5 s, no CPU
    answers: list[tuple[int, dict[str, str], bytes]] = []

    def run_slow() -> None:
        answers.append(http(cdc.port, slow, headers=basic(ALICE)))

    def third() -> tuple[float, tuple[int, dict[str, str], bytes]] | None:
        started = time.monotonic()
        answer = http(cdc.port, f"SELECT 'third-{marker}'", headers=basic(BOB))
        return (time.monotonic() - started, answer) if answer[0] != 200 else None

    # On a busy machine (the store's process runs niced, beside another test worker) the two slow
    # queries may not both be running within their 2.5 s (the server sleeps at most 3 s per block),
    # or the third may take a slot before the second slow one arrives (which is then refused): try
    # again, up to ten times (five failed in a row once under a full parallel run).
    for attempt in range(10):
        answers.clear()
        running = [threading.Thread(target=run_slow) for _ in range(2)]
        for thread in running:
            thread.start()
        try:
            elapsed, (status, headers, body) = wait_until(
                third, 2.5, "a third query to find both slots taken", every=0.02
            )
        except AssertionError:
            if attempt == 9:
                raise
            continue
        finally:
            for thread in running:
                thread.join(timeout=30)
        if [a[0] for a in answers] == [200, 200]:
            break
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (503, "202")
    assert b"TOO_MANY_SIMULTANEOUS_QUERIES" in body
    assert b"Maximum: 2" in body
    assert elapsed < 2  # answered at once: a queued query would have waited for a slot, then got 200
    assert [a[0] for a in answers] == [200, 200]
    assert http(cdc.port, "SELECT 1", headers=basic(BOB))[::2] == (200, b"1\n")  # both slots are back
    refusals = [r for r in wait_logged(cdc.client(), f"third-{marker}") if r["error_code"]]
    assert refusals
    assert {(r["auditor"], r["error_code"]) for r in refusals} == {("bob", 202)}


def test_no_query_runs_unlogged_while_the_query_log_is_behind(cdc: CdcProcess) -> None:
    # Two rows waiting (the log flushes only every minute here) stand for a store that refuses them.
    env = {
        **auditors_env(),
        "SHARDWALLET_AUDIT_QUERY_LOG_FLUSH_SECONDS": "60",
        "SHARDWALLET_AUDIT_QUERY_LOG_MAX_PENDING": "2",
    }
    cdc.start(env=env)
    assert [http(cdc.port, f"SELECT {n}", headers=basic(ALICE))[0] for n in (1, 2)] == [200, 200]
    status, headers, body = http(cdc.port, "SELECT 3", headers=basic(ALICE))
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (503, "202")
    assert b"the audit query log is behind (2 rows not yet stored)" in body


def test_the_query_log_records_who_ran_what_with_which_parameters_and_how_many_rows(cdc: CdcProcess) -> None:
    cdc.start(env=auditors_env())
    marker = uuid.uuid4().hex
    before = time.time()
    rows = as_(ALICE, cdc.port).query(
        f"SELECT number FROM numbers(100) WHERE number < {{n:UInt32}} AND '{marker}' != ''",  # noqa: S608
        parameters={"n": 7},
    )
    assert len(rows.result_rows) == 7
    bobs = {"X-ClickHouse-User": "bob", "X-ClickHouse-Key": "bob-secret"}
    missing = f"SELECT * FROM audit.no_such_table -- {marker}"  # noqa: S608
    status, _, _ = http(cdc.port, body=missing.encode(), headers=bobs)
    assert status == 404

    alice, bob = wait_logged(cdc.client(), marker, rows=2)
    assert alice["auditor"] == "alice"
    assert marker in alice["query"]
    assert "{n:UInt32}" in alice["query"]
    assert alice["parameters"] == {"n": "7"}
    assert (alice["result_rows"], alice["read_rows"], alice["error_code"], alice["error"]) == (7, 7, 0, "")
    assert alice["client_address"] == "127.0.0.1"
    assert before - 1 <= alice["time"].timestamp() <= time.time()
    assert alice["duration_ms"] >= 0
    assert (bob["auditor"], bob["result_rows"], bob["error_code"]) == ("bob", 0, 60)
    assert "UNKNOWN_TABLE" in bob["error"]
    # Auditors read the log like any audit table, and its own reading is logged too.
    assert count(as_(BOB, cdc.port), "SELECT count() FROM audit.query_log WHERE auditor = 'alice'") >= 1


def test_in_server_mode_the_tools_read_with_the_auditor_dsn_and_never_the_writers(cdc: CdcProcess) -> None:
    # The CDC's endpoint stands in for a ClickHouse server (none can be installed here); the
    # writer's server is a port that must never see a connection.
    cdc.start(env=auditors_env())
    auditor_dsn = f"http://{ALICE.user}:{ALICE.password}@127.0.0.1:{cdc.port}"
    marker = f"server-mode-{uuid.uuid4().hex}"
    with CountingPort() as writer:
        writer_dsn = f"http://writer:writer-secret@127.0.0.1:{writer.port}"
        with override_settings(CLICKHOUSE_URL=writer_dsn, CLICKHOUSE_AUDITOR_URL=auditor_dsn):
            assert connect_reader().query(f"SELECT '{marker}'").result_rows == [(marker,)]
            assert marker in run("audit_sql", f"SELECT '{marker}-audit-sql'")

        for unset_or_writers in ("", f"http://writer:other@127.0.0.1:{cdc.port}"):
            with override_settings(CLICKHOUSE_URL=writer_dsn, CLICKHOUSE_AUDITOR_URL=unset_or_writers):
                with pytest.raises(AuditorAccessNotConfigured) as refused:
                    connect_reader()
                assert "SHARDWALLET_CLICKHOUSE_AUDITOR_URL" in str(refused.value)
                for command in (["audit_sql", "SELECT 1"], ["audit_query", "conservation"], ["reconcile"]):
                    with pytest.raises(CommandError, match="SHARDWALLET_CLICKHOUSE_AUDITOR_URL"):
                        run(*command)
    assert writer.connections == 0
    rows = wait_logged(cdc.client(), marker, rows=2)
    assert {r["auditor"] for r in rows} == {"alice"}


HEAVY_QUERY = (
    "SELECT number % 1000003 AS k, count() AS c FROM numbers_mt(600000000) GROUP BY k ORDER BY c DESC, k LIMIT 1"
)


def ingestion_during(cdc: CdcProcess, query: str, login: Login) -> dict[str, Any]:
    """Deposits on both shards while `query` runs through the endpoint, and how soon each reached
    the store: `audit.changes.received_at` (set by the store on insert) minus the commit time."""
    owner, _ = make_client()
    wallets = [make_wallet(owner, shard=alias) for alias in ("shard_00", "shard_01")]
    client = as_(login, cdc.port)
    wait_until(lambda: caught_up(client), 30, "catch-up before the heavy query")
    tag = f"heavy-{uuid.uuid4().hex[:12]}"
    answer: dict[str, Any] = {}

    def heavy() -> None:
        started = time.monotonic()
        answer["http"] = http(cdc.port, query, headers=basic(login))
        answer["seconds"] = time.monotonic() - started

    samples: list[dict[str, Any]] = []
    thread = threading.Thread(target=heavy)
    query_start = datetime.now(tz=UTC)
    thread.start()
    deposits = 0
    while thread.is_alive():
        wallet_fund(wallet_id=wallets[deposits % 2].id, amount_minor=1, reference=f"{tag}-{deposits}")
        deposits += 1
        if (status := cdc.status()) is not None:
            samples.append(status)
        time.sleep(0.05)
    thread.join()
    query_end = datetime.now(tz=UTC)
    wait_until(lambda: caught_up(client), 30, "catch-up after the heavy query")
    [(stored, stored_during, median, worst)] = client.query(
        "SELECT count(), countIf(received_at <= {end:DateTime64(6, 'UTC')}),"
        " quantile(0.5)(delay), max(delay)"
        " FROM (SELECT received_at, dateDiff('millisecond', commit_time, received_at) / 1000 AS delay"
        "       FROM audit.changes WHERE table_name = 'ledger_entry' AND position(new_row, {tag:String}) > 0)",
        parameters={"end": query_end, "tag": tag},
    ).result_rows
    assert stored == deposits
    lags = [shard["lag_seconds"] for s in samples for shard in s["shards"].values()]
    return {
        "query_status": answer["http"][0],
        "query_seconds": round(answer["seconds"], 2),
        "query_window": [query_start.isoformat(), query_end.isoformat()],
        "deposits_during_query": deposits,
        "stored_before_query_ended": stored_during,
        "delay_median_s": round(median, 3),
        "delay_max_s": round(worst, 3),
        "status_lag_seconds_max": max(lags) if lags else None,
    }


def test_a_heavy_auditor_query_does_not_stall_ingestion(cdc: CdcProcess) -> None:
    cdc.start(env=auditors_env(max_threads="1"))
    figures = ingestion_during(cdc, HEAVY_QUERY, ALICE)
    print("heavy query vs ingestion:", json.dumps(figures))  # the figures docs/ARCHITECTURE.md quotes
    assert figures["query_status"] == 200
    assert figures["query_seconds"] >= 2, "the query was not heavy enough to show anything"
    assert figures["deposits_during_query"] >= 10
    # The store kept taking rows while the query ran, each within a few seconds: a stall would
    # hold some for about the query's own time. Bounded by a share of that time too, as the
    # machine's speed swings (41 s queries and a 3.3 s worst delay in a slow hour).
    bound = max(3.0, figures["query_seconds"] / 4)
    assert figures["stored_before_query_ended"] >= figures["deposits_during_query"] // 2, figures
    assert figures["delay_max_s"] <= bound, figures
    assert figures["status_lag_seconds_max"] <= bound, figures


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _raw(port: int, head: bytes, *, then: bytes = b"", timeout: float = 10) -> bytes:
    """Send `head` (and `then`, as far as the server reads it) on a new connection; what it answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(head)
        if then:
            try:
                conn.sendall(then)
            except OSError:  # the server answered and closed without reading it all: the point
                return b"(closed while sending)"
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and len(answer) > 200:
                break
        return answer


def test_malformed_bodies_are_refused_without_buffering_them(cdc: CdcProcess) -> None:
    cdc.start(env=auditors_env())
    auth = basic(ALICE)["Authorization"].encode()
    request = b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + b"\r\n"
    assert b" 400 " in _raw(cdc.port, request + b"Content-Length: -5\r\n\r\nSELECT 1")
    assert b" 400 " in _raw(cdc.port, request + b"Content-Length: 12abc\r\n\r\n")
    assert b" 413 " in _raw(cdc.port, request + b"Content-Length: 99999999999\r\n\r\n")
    chunked = request + b"Transfer-Encoding: chunked\r\n\r\n"
    assert b" 400 " in _raw(cdc.port, chunked + b"-10\r\nSELECT 1\r\n0\r\n\r\n")
    assert b" 400 " in _raw(cdc.port, chunked + b"zz\r\n")
    assert b" 413 " in _raw(cdc.port, chunked + b"7fffffff\r\n")
    # A chunk-size line that never ends: 1 KiB of it is read, then the connection is answered and
    # closed (the client sees the 400 or, with its data unread, a reset); it is never held in memory.
    before = _rss_kib(cdc.process.pid)
    answer = _raw(cdc.port, chunked, then=b"1" * (64 << 20))
    assert b" 400 " in answer or answer == b"(closed while sending)"
    assert _rss_kib(cdc.process.pid) - before < 32 << 10
    status, _, _ = http(cdc.port, "SELECT 1", headers=basic(ALICE))
    assert status == 200


def test_a_query_id_with_a_line_break_is_refused_and_results_are_capped_in_bytes(cdc: CdcProcess) -> None:
    cdc.start(env=auditors_env(max_result_bytes="100000"))
    status, headers, body = http(
        cdc.port, "SELECT 1", headers=basic(ALICE), params={"query_id": "q1\r\nX-Injected: yes"}
    )
    assert status == 400
    assert b"BAD_ARGUMENTS" in body
    assert "X-Injected" not in headers
    status, headers, _ = http(cdc.port, "SELECT 1", headers=basic(ALICE), params={"query_id": "audit-42"})
    assert (status, headers["X-ClickHouse-Query-Id"]) == (200, "audit-42")
    status, _, body = http(cdc.port, "SELECT number FROM numbers(100000)", headers=basic(ALICE))
    assert status == 500
    assert b"TOO_MANY_ROWS_OR_BYTES" in body


def test_connections_are_capped_and_idle_sockets_time_out(cdc: CdcProcess) -> None:
    env = {
        **auditors_env(),
        "SHARDWALLET_AUDIT_HTTP_MAX_CONNECTIONS": "3",
        "SHARDWALLET_AUDIT_HTTP_TIMEOUT_SECONDS": "2",
    }
    cdc.start(env=env)
    idle = [socket.create_connection(("127.0.0.1", cdc.port), timeout=10) for _ in range(3)]
    try:
        time.sleep(0.3)
        assert b" 503 " in _raw(cdc.port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        # The idle ones are closed after the timeout, and their slots serve again.
        for conn in idle:
            assert conn.recv(1024) == b""
        status, _, _ = http(cdc.port, "SELECT 1", headers=basic(ALICE))
        assert status == 200
    finally:
        for conn in idle:
            conn.close()


_READ_ONLY_PROBE = """
import sys, types
import django
django.setup()
import chdb
from apps.audit.store import AuditStoreUnavailable, require_read_only

class Client:  # clickhouse-connect's query() shape over a chDB connection
    def __init__(self, path):
        self.conn = chdb.connect(path)
    def query(self, sql):
        cursor = self.conn.cursor()
        cursor.execute(sql)
        return types.SimpleNamespace(result_rows=cursor.fetchall())

try:
    require_read_only(Client(sys.argv[1]))
except AuditStoreUnavailable as exc:
    print("refused:", exc)
else:
    print("accepted")
"""


@pytest.mark.parametrize(("settings_suffix", "verdict"), [("", "refused"), ("?readonly=1", "accepted")])
def test_an_auditors_connection_that_can_write_is_refused(tmp_path: Path, settings_suffix: str, verdict: str) -> None:
    """ClickHouse itself says whether the connection is read-only (chDB in a process of its own)."""
    import subprocess
    import sys

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "wallet_project.settings_test"}
    path = f"{tmp_path / 'store'}{settings_suffix}"
    result = subprocess.run(
        [sys.executable, "-c", _READ_ONLY_PROBE, path], env=env, capture_output=True, text=True, timeout=120,
        cwd=settings.BASE_DIR,
    )  # fmt: skip
    assert result.stdout.startswith(verdict), result.stdout + result.stderr[-2000:]
    if verdict == "refused":
        assert "not read-only (readonly=0)" in result.stdout


def test_the_operators_trail_is_copied_to_the_store_and_later_edits_are_not(cdc: CdcProcess) -> None:
    from apps.operators.models import OperatorAction
    from apps.operators.services import operator_freeze_wallet
    from tests.operators.helpers import make_staff

    cdc.start(env={**auditors_env(), "SHARDWALLET_AUDIT_OPERATOR_TRAIL_SECONDS": "0.3"})
    owner, _ = make_client()
    wallet = make_wallet(owner)
    record = operator_freeze_wallet(actor=make_staff("olga", "operators"), wallet_id=wallet.id, reason="KYC")
    call_command("cdc_resnapshot", "shard_00", "--reason", "drill", "--wait", "0", stdout=StringIO())
    client = as_(ALICE, cdc.port)

    def stored() -> list[tuple[Any, ...]]:
        return client.query(
            "SELECT id, actor, action, target_id, reason, outcome FROM audit.operator_actions FINAL ORDER BY id"
        ).result_rows

    rows = wait_until(lambda: len(found := stored()) == 2 and found, 20, "the trail in the store")
    assert rows[0] == (record.id, "olga", "freeze_wallet", wallet.id, "KYC", "succeeded")
    assert rows[1][1].startswith("command line: ")
    assert rows[1][2:] == ("cdc_resnapshot", None, "drill", "succeeded")
    # Whoever can write to the control database cannot rewrite the stored trail.
    OperatorAction.objects.using("default").filter(id=record.id).update(reason="nothing to see", outcome="refused")
    time.sleep(1.5)
    assert stored()[0] == (record.id, "olga", "freeze_wallet", wallet.id, "KYC", "succeeded")
