"""At most one owner per bucket, whatever operators and crashes do to a move.

A mover is stopped (SIGSTOP, it keeps its connections and lease) or killed at each phase;
a second `--resume` or `--abort` is then tried, as an operator who thinks it stuck would;
the stopped one is let go afterwards. Each bucket stays owned by at most one shard, money
is conserved, and the move ends finished or undone with nothing left behind.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apps.sharding import moves
from apps.sharding.lease import MoveBusy, evict, lease_holder
from apps.sharding.mover import MoveFailed, Mover, plan_move
from apps.sharding.moves import MoveConflict, MoveLost
from apps.sharding.routing import shard_map
from apps.transfers.checks import check_ledger
from tests.factories import ALL_DATABASES, make_client, raw_query
from tests.factories import wallet_balance as balance
from tests.sharding.conftest import added_shard_port
from tests.sharding.moving import (
    assert_at_most_one_owner,
    assert_owned_by,
    move_command,
    move_objects,
    owner_states,
    process_state,
    range_rows,
    run_manage,
    run_mover_process,
    start_mover_process,
    wallet_in_bucket,
)

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=ALL_DATABASES),
    pytest.mark.slow,
    pytest.mark.usefixtures("file_layout_afterwards"),
]

FIRST, LAST = 0, 63


@pytest.fixture
def seeded() -> list[Any]:
    owner, _key = make_client()
    return [wallet_in_bucket(owner, b, funded=400) for b in (3, 33, 63)]


def _wait_for(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _output(result: Any) -> str:
    return result.stdout + result.stderr


def _assert_second_commands_refused(pid: int, state: str) -> None:
    """An operator who thinks the mover stuck: `--resume` and `--abort` are refused, naming the
    holder and its `state` ('running' or 'stopped'); `--status` names it (STOPPED or not)."""
    for command in ("--resume", "--abort"):
        refused = move_command(command, "--cleanup-delay", "0.3")
        assert refused.returncode != 0, _output(refused)
        assert f"pid {pid}" in _output(refused), _output(refused)
        assert state in _output(refused), _output(refused)
    status = move_command("--status")
    assert f"pid {pid}" in status.stdout, status.stdout
    assert ("STOPPED" in status.stdout) == (state == "stopped"), status.stdout


# Where the first mover is stopped, and who owns the range once the second command is done.
STOP_POINTS = [
    ("move_phase_copying", "abort", "shard_00"),
    ("move_copying", "abort", "shard_00"),
    ("move_phase_verifying", "abort", "shard_00"),
    ("move_after_fence", "abort", "shard_00"),  # the range is fenced and owned by nobody
    ("move_after_own", "resume", "shard_01"),
    ("move_phase_cleaning", "resume", "shard_01"),
]


@pytest.mark.parametrize(("stop_at", "second", "owner"), STOP_POINTS)
def test_a_second_command_beside_a_stopped_mover_is_refused_and_after_eviction_the_stopped_one_changes_nothing(
    stop_at: str, second: str, owner: str, seeded: list[Any], tmp_path: Path
) -> None:
    marker = tmp_path / "stop"
    marker.touch()
    total = sum(balance(w.id) for w in seeded)
    first = start_mover_process("0", "63", "--to", "shard_01", "--cleanup-delay", "0.3", stop_at=stop_at, marker=marker)
    try:
        _wait_for(lambda: process_state(first.pid) == "T", f"the mover to stop at {stop_at}")
        assert_at_most_one_owner(FIRST, LAST)
        _assert_second_commands_refused(first.pid, "stopped")
        assert_at_most_one_owner(FIRST, LAST)

        # The operator ends its lease instead, and finishes or undoes the move.
        evicted = move_command("--evict")
        assert evicted.returncode == 0, _output(evicted)
        assert f"pid {first.pid}" in evicted.stdout, _output(evicted)
        if second == "abort":
            done = move_command("--abort", "--cleanup-delay", "0.3")
        else:
            refused = move_command("--abort")
            assert refused.returncode != 0, _output(refused)
            assert "has switched" in _output(refused), _output(refused)
            done = move_command("--resume", "--cleanup-delay", "0.3")
        assert done.returncode == 0, _output(done)
        assert_owned_by(FIRST, LAST, owner)
    finally:
        first.send_signal(signal.SIGCONT)
    # Let go, the first mover notices the move is no longer its own and exits, changing nothing.
    out, _ = first.communicate(timeout=30)
    assert first.returncode != 0, out
    assert "no longer runs the move" in out, out
    assert_owned_by(FIRST, LAST, owner)
    other = "shard_01" if owner == "shard_00" else "shard_00"
    assert sum(range_rows(other, FIRST, LAST).values()) == 0
    assert move_objects("shard_00") == move_objects("shard_01") == []
    assert sum(balance(w.id) for w in seeded) == total
    assert check_ledger().violations == []


@pytest.mark.parametrize("hold_at", [point for point, _, _ in STOP_POINTS])
def test_a_second_command_beside_a_live_mover_at_any_phase_is_refused_and_the_first_finishes(
    hold_at: str, seeded: list[Any], tmp_path: Path
) -> None:
    """The same operator, beside a mover that is alive and only slow at that phase."""
    marker = tmp_path / "hold"
    marker.touch()
    total = sum(balance(w.id) for w in seeded)
    first = start_mover_process("0", "63", "--to", "shard_01", "--cleanup-delay", "0.3", hold_at=hold_at, marker=marker)
    try:
        _wait_for(lambda: Path(f"{marker}.held").exists(), f"the mover to reach {hold_at}")
        assert process_state(first.pid) not in ("", "T")
        assert_at_most_one_owner(FIRST, LAST)
        _assert_second_commands_refused(first.pid, "running")
        assert_at_most_one_owner(FIRST, LAST)
    finally:
        marker.unlink(missing_ok=True)
    # Refused commands changed nothing: let go, the first mover finishes the move.
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 0, out
    assert_owned_by(FIRST, LAST, "shard_01")
    assert sum(range_rows("shard_00", FIRST, LAST).values()) == 0
    assert move_objects("shard_00") == move_objects("shard_01") == []
    assert sum(balance(w.id) for w in seeded) == total
    assert check_ledger().violations == []


KILL_POINTS = [
    ("move_copying", "abort", "shard_00"),
    ("move_after_fence", "abort", "shard_00"),
    ("move_after_fence", "resume", "shard_01"),
    ("move_after_own", "abort-then-resume", "shard_01"),
]


@pytest.mark.parametrize(("crash_at", "second", "owner"), KILL_POINTS)
def test_a_killed_mover_leaves_a_move_that_can_be_finished_or_undone(
    crash_at: str, second: str, owner: str, seeded: list[Any], tmp_path: Path
) -> None:
    marker = tmp_path / "crash"
    marker.touch()
    total = sum(balance(w.id) for w in seeded)
    killed = run_mover_process("0", "63", "--to", "shard_01", crash_at=f"{crash_at}:{marker}")
    assert killed.returncode != 0, _output(killed)
    assert not marker.exists(), _output(killed)
    assert_at_most_one_owner(FIRST, LAST)
    assert lease_holder(moves.active_move().id) is None  # the lease died with it
    if second == "abort-then-resume":
        refused = move_command("--abort")
        assert refused.returncode != 0, _output(refused)
        assert "has switched" in _output(refused), _output(refused)
        second = "resume"
    done = move_command(f"--{second}", "--cleanup-delay", "0.3")
    assert done.returncode == 0, _output(done)
    assert_owned_by(FIRST, LAST, owner)
    assert move_objects("shard_00") == move_objects("shard_01") == []
    assert sum(balance(w.id) for w in seeded) == total
    assert check_ledger().violations == []


def test_an_abort_killed_half_way_is_finished_by_the_next_abort_and_refuses_a_resume(
    seeded: list[Any], tmp_path: Path
) -> None:
    planned = plan_move(FIRST, LAST, "shard_01")
    Mover(planned).run(stop_after="verifying")
    marker = tmp_path / "crash"
    marker.touch()
    killed = run_mover_process("--abort", crash_at=f"move_aborting:{marker}")
    assert killed.returncode != 0, _output(killed)
    assert not marker.exists(), _output(killed)
    assert moves.move_get(planned.id).phase == moves.ABORTING
    resumed = move_command("--resume")
    assert resumed.returncode != 0, _output(resumed)
    assert "being aborted" in _output(resumed), _output(resumed)
    done = move_command("--abort")
    assert done.returncode == 0, _output(done)
    assert moves.move_get(planned.id).state == "aborted"
    assert_owned_by(FIRST, LAST, "shard_00")
    assert sum(range_rows("shard_01", FIRST, LAST).values()) == 0


def test_a_running_mover_holds_its_move_and_a_second_one_is_refused_until_it_ends(seeded: list[Any]) -> None:
    mover = Mover(plan_move(FIRST, LAST, "shard_01"), cleanup_delay=20)
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(mover.run())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        _wait_for(lambda: "clean-up delay" in moves.active_move().detail.get("waiting_on", ""), "the clean-up delay")
        refused = move_command("--resume")
        assert refused.returncode != 0, _output(refused)
        assert "is being run by" in _output(refused), _output(refused)
        assert "running" in _output(refused), _output(refused)
        status = move_command("--status")
        assert "waiting on the clean-up delay" in status.stdout, status.stdout
        with pytest.raises(MoveBusy):
            Mover(moves.active_move()).abort()
        # Its lease taken away, it stops within a second or so, having deleted nothing.
        started = time.monotonic()
        assert evict(mover.move.id) is not None
        thread.join(timeout=10)
        assert time.monotonic() - started < 5
    finally:
        thread.join(timeout=30)
    assert len(outcome) == 1, outcome
    assert isinstance(outcome[0], MoveLost), outcome
    assert range_rows("shard_00", FIRST, LAST)["ledger_wallet"] == 3  # nothing cleaned
    assert_owned_by(FIRST, LAST, "shard_01")
    finished = move_command("--resume", "--cleanup-delay", "0")
    assert finished.returncode == 0, _output(finished)
    assert sum(range_rows("shard_00", FIRST, LAST).values()) == 0


def test_the_take_over_needs_the_source_fenced_for_it_and_the_unfence_needs_the_target_not_owning(
    seeded: list[Any],
) -> None:
    mover = Mover(plan_move(FIRST, LAST, "shard_01"))
    mover.run(stop_after="verifying")
    with mover.leased():
        previous = mover._allocate_epoch()
        mover._fence(previous)
        # Unfenced behind its back (what a stale abort would have done): no take-over.
        raw_query("shard_00", "UPDATE sharding_bucket_owner SET state = 'owned' WHERE bucket BETWEEN 0 AND 63")
        with pytest.raises(MoveFailed, match="no longer fenced"):
            mover._take_over()
        assert owner_states("shard_01", FIRST, LAST) <= {"moved"}
        # Fenced again and taken over: the source can no longer be unfenced.
        mover._fence(mover._allocate_epoch())
        mover._take_over()
        assert_at_most_one_owner(FIRST, LAST)
        with pytest.raises(MoveConflict, match="owns 64 bucket"):
            mover._unfence()
        assert owner_states("shard_00", FIRST, LAST) == {"fenced"}
    Mover(moves.active_move(), cleanup_delay=0).run()
    assert_owned_by(FIRST, LAST, "shard_01")


def test_each_switch_attempt_takes_its_own_epoch_and_shard_add_never_shares_one(
    seeded: list[Any], monkeypatch: Any, request: Any, tmp_path: Path
) -> None:
    planned = plan_move(FIRST, LAST, "shard_01")
    Mover(planned).run(stop_after="verifying")

    def never_applied(self: Mover, fence_lsn: str, deadline: float) -> None:
        raise MoveFailed("the target did not reach the fence (forced)")

    monkeypatch.setattr(Mover, "_wait_applied", never_applied)
    with pytest.raises(MoveFailed, match="gave up three times"):
        Mover(planned).run()
    monkeypatch.undo()
    failed = moves.move_get(planned.id)
    assert failed.detail["switch_failures"] == 3
    assert_owned_by(FIRST, LAST, "shard_00")  # every attempt unfenced the source
    epochs_tried = {
        int(e) for (e,) in raw_query("shard_00", "SELECT epoch FROM sharding_move_marker WHERE kind = 'fence'")
    }
    assert len(epochs_tried) >= 3  # a new epoch per attempt, never one planned ahead

    # shard_add after the failed switch, then during a switch held at its fence.
    added = request.getfixturevalue("added_shard")
    after_add = int(raw_query("default", "SELECT epoch FROM sharding_map_state")[0][0])
    assert after_add > max(epochs_tried)
    marker = tmp_path / "stop"
    marker.touch()
    resumed = start_mover_process("--resume", "--cleanup-delay", "0.3", stop_at="move_after_fence", marker=marker)
    try:
        _wait_for(lambda: process_state(resumed.pid) == "T", "the switch to hold at its fence")
        fence_epoch = moves.move_get(planned.id).epoch
        assert fence_epoch > after_add
        # shard_add again (the same server: it only registers it anew, with a new epoch).
        added_again = run_manage(
            "shard_add", added, "--host", "127.0.0.1", "--port", str(added_shard_port()), "--name", "shardwallet"
        )
        assert added_again.returncode == 0, _output(added_again)
    finally:
        resumed.send_signal(signal.SIGCONT)
    out, _ = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, out
    done = moves.move_get(planned.id)
    map_epoch = int(raw_query("default", "SELECT epoch FROM sharding_map_state")[0][0])
    own_epochs = [int(e) for (e,) in raw_query("shard_01", "SELECT epoch FROM sharding_move_marker WHERE kind = 'own'")]
    assert own_epochs[-1] == done.epoch == fence_epoch
    assert map_epoch == done.detail["map_epoch"] > done.epoch
    assert added in shard_map().aliases
    assert_owned_by(FIRST, LAST, "shard_01")


def test_truncate_is_refused_while_a_move_involves_the_shard_and_the_move_does_not_carry_it(
    seeded: list[Any],
) -> None:
    planned = plan_move(FIRST, LAST, "shard_01")
    Mover(planned).run(stop_after="verifying")
    [(publishes_truncate,)] = raw_query(
        "shard_00", "SELECT pubtruncate FROM pg_publication WHERE pubname = %s", [planned.name]
    )
    assert publishes_truncate is False
    for alias in ("shard_00", "shard_01"):
        with pytest.raises(psycopg.Error) as refused:
            raw_query(alias, "TRUNCATE transfers_event")
        assert "a bucket move involves this shard" in str(refused.value)
    Mover(planned).abort()
    # A fence in place (a switch under way) refuses it too.
    raw_query("shard_00", "UPDATE sharding_bucket_owner SET state = 'fenced' WHERE bucket = 5")
    try:
        with pytest.raises(psycopg.Error, match="a bucket move involves this shard"):
            raw_query("shard_00", "TRUNCATE ledger_movement_key")
    finally:
        raw_query("shard_00", "UPDATE sharding_bucket_owner SET state = 'owned' WHERE bucket = 5")
    assert sum(balance(w.id) for w in seeded) == 1200


def test_a_fence_left_by_a_dead_mover_is_an_alarm_with_the_command_that_ends_it(
    seeded: list[Any], tmp_path: Path, settings: Any
) -> None:
    from django.test import Client

    from tests.operators.helpers import logged_in, make_staff

    settings.SHARD_FENCE_ALARM_SECONDS = 0.5
    assert Client().get("/health").json()["components"]["bucket_fences"] == {"ok": True}
    marker = tmp_path / "crash"
    marker.touch()
    killed = run_mover_process("0", "63", "--to", "shard_01", crash_at=f"move_after_fence:{marker}")
    assert killed.returncode != 0, _output(killed)
    time.sleep(0.6)
    component = Client().get("/health").json()["components"]["bucket_fences"]
    assert component["ok"] is False
    assert component["ranges"] == [
        {"shard": "shard_00", "first": 0, "last": 63, "seconds": component["ranges"][0]["seconds"]}
    ]
    assert "no process runs move" in component["error"]
    assert "move_buckets --resume" in component["error"]
    metrics = Client().get("/metrics").content.decode()
    assert 'shardwallet_bucket_fence_stranded_seconds{buckets="0..63",shard="shard_00"}' in metrics
    page = logged_in(make_staff("olga", "viewers")).get("/admin/operations/").content.decode()
    assert "Writes stopped: buckets 0..63 fenced on shard_00" in page
    # The command it names ends it.
    resumed = move_command("--resume", "--cleanup-delay", "0")
    assert resumed.returncode == 0, _output(resumed)
    assert Client().get("/health").json()["components"]["bucket_fences"] == {"ok": True}
    assert_owned_by(FIRST, LAST, "shard_01")


def test_only_members_of_the_mover_role_bypass_the_fence(seeded: list[Any]) -> None:
    from apps.sharding.fence_sql import MOVER_ROLE

    wallet = seeded[0]  # bucket 3, on shard_00
    db = shard_map().shards["shard_00"]
    raw_query("shard_00", "DROP ROLE IF EXISTS sw_app_test")
    raw_query("shard_00", "CREATE ROLE sw_app_test LOGIN")
    raw_query("shard_00", "GRANT SELECT, UPDATE ON ledger_wallet TO sw_app_test")
    raw_query("shard_00", "GRANT SELECT ON sharding_bucket_owner TO sw_app_test")
    raw_query("shard_00", "UPDATE sharding_bucket_owner SET state = 'fenced' WHERE bucket = 3")
    try:
        conninfo = f"host={db.host} port={db.port} dbname={db.name} user=sw_app_test"
        update = "UPDATE ledger_wallet SET updated_at = now() WHERE id = %s"
        with psycopg.connect(conninfo, autocommit=True) as app:
            app.execute("SET shardwallet.mover = 'on'")  # anyone may set it...
            with pytest.raises(psycopg.Error) as refused:
                app.execute(update, [wallet.id])
            assert refused.value.sqlstate == "SWF01"  # ...but it counts only for the mover's role
        raw_query("shard_00", f"GRANT {MOVER_ROLE} TO sw_app_test")
        with psycopg.connect(conninfo, autocommit=True) as mover:
            mover.execute("SET shardwallet.mover = 'on'")
            assert mover.execute(update, [wallet.id]).rowcount == 1
    finally:
        raw_query("shard_00", "UPDATE sharding_bucket_owner SET state = 'owned' WHERE bucket = 3")
        raw_query("shard_00", "DROP OWNED BY sw_app_test")
        raw_query("shard_00", "DROP ROLE sw_app_test")


def test_an_abort_cut_short_by_a_shard_going_down_says_so_and_finishes_when_run_again(
    seeded: list[Any], payee_shard: Any
) -> None:
    planned = plan_move(FIRST, LAST, "shard_01")
    Mover(planned).run(stop_after="verifying")
    payee_shard.stop()  # the target goes down in the middle of the operator's abort
    try:
        cut_short = move_command("--abort")
    finally:
        payee_shard.start()
    assert cut_short.returncode == 1
    assert "a database could not be reached" in cut_short.stderr, cut_short.stderr
    assert "run the same command again" in cut_short.stderr
    assert_at_most_one_owner(FIRST, LAST)
    refused = move_command("--resume")
    assert "being aborted" in refused.stderr, refused.stderr
    done = move_command("--abort")
    assert done.returncode == 0, done.stderr
    assert moves.move_get(planned.id).state == "aborted"
    assert_owned_by(FIRST, LAST, "shard_00")
    assert move_objects("shard_00") == move_objects("shard_01") == []
