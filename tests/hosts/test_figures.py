"""The report's figures from the client's records: windows, groups, answers a client cannot act on."""

from __future__ import annotations

from hosts.figures import Window, bad_answers, completions, latencies, overall, status_counts
from hosts.records import Attempt, LoadResult, Request


def transfer(key: str, payer: str, payee: str, *attempts: Attempt) -> Request:
    return Request(key, "transfer", f"w-{key}", 10, payer, f"p-{key}", payee, list(attempts))


def ok(sent: float, latency: float, tid: str, status: int = 202) -> Attempt:
    return Attempt(sent, latency, status, transfer_id=tid, state="pending")


def test_a_retried_request_counts_once_with_its_accepted_attempt() -> None:
    request = transfer(
        "k1", "shard_01", "shard_00", Attempt(10.0, 3.0, 503, "service_unavailable"), ok(14.0, 0.05, "t1")
    )
    assert latencies([request], Window("w", 13, 15)) == [0.05]
    assert status_counts([request]) == {"202": 1, "503 service_unavailable": 1}
    assert bad_answers([request]) == []


def test_500s_and_unretryable_503s_are_bad_answers() -> None:
    requests = [
        transfer("k1", "shard_00", "shard_01", Attempt(1.0, 0.1, 500, "internal_error")),
        transfer("k2", "shard_00", "shard_01", Attempt(1.0, 0.1, 503, "something_else")),
        transfer("k3", "shard_00", "shard_01", Attempt(1.0, 15.0, None, "TimeoutError: timed out")),
    ]
    assert [b.split(" ", 1)[0] for b in bad_answers(requests)] == ["k1", "k2"]


def test_completions_count_by_terminal_time_within_the_window() -> None:
    requests = [
        transfer("k1", "shard_00", "shard_01", ok(1.0, 0.1, "t1")),
        transfer("k2", "shard_00", "shard_01", ok(1.0, 0.1, "t2")),
    ]
    times = {"t1": ("completed", 1.0, 5.0), "t2": ("completed", 1.0, 25.0)}
    assert completions(requests, times, Window("during", 2, 20)) == 1


def test_overall_counts_completed_per_second_up_to_the_last_terminal_time() -> None:
    requests = [transfer(f"k{i}", "shard_00", "shard_01", ok(100.0 + i, 0.01, f"t{i}")) for i in range(10)]
    times = {f"t{i}": ("completed", 100.0 + i, 101.0 + i) for i in range(10)}
    figures = overall(LoadResult("a", 100.0, 110.0, 110.0, 1, requests), times)
    assert figures["completed"] == 10
    assert figures["completed_per_s"] == 1.0  # 10 in the 10 s from the start to the last one's end
    assert figures["http_500"] == 0
