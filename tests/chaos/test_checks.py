"""The verdict's reading of transfers left in flight (pure: a snapshot built by hand)."""

from chaos.checks import Verdict, check_terminal
from chaos.snapshot import Snapshot, TransferRow


def row(tid: str, status: str, *, parked: bool = False) -> TransferRow:
    return TransferRow(tid, "payer", "payee", 100, "USD", status, None, 2, "", parked)


def test_transfers_in_flight_are_listed_after_a_warning_that_the_money_checks_saw_them_mid_way() -> None:
    snap = Snapshot(
        transfers={t.id: t for t in [row("a", "debited"), row("b", "completed"), row("c", "debited", parked=True)]}
    )
    verdict = Verdict()
    check_terminal(verdict, snap)
    first, *each = verdict.violations["every accepted transfer terminal"]
    assert first.startswith("1 transfer(s) still in flight when the shards were read")
    assert [m.split()[1:3] for m in each] == [["a", "in"], ["c", "parked"]]


def test_a_parked_transfer_alone_gives_no_warning_about_money_in_flight() -> None:
    verdict = Verdict()
    check_terminal(verdict, Snapshot(transfers={"c": row("c", "debited", parked=True)}))
    assert len(verdict.violations["every accepted transfer terminal"]) == 1
