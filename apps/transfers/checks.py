"""check_ledger: verify the money invariants across every shard.

- no negative balance; each wallet's balance equals the sum of its entries, and its
  entry sequence has no gaps;
- every transfer's entries match its status (debited at most once, credited at most once,
  refunded only if debited and never credited), and no debit/credit/refund lacks a transfer;
- a cross-shard credit agrees with the payee's recorded outcome;
- per currency: sum(balances) = deposits - withdrawals - money in flight, where money in
  flight is computed from the transfers (debited, neither credited nor refunded).

It reads everything into memory, which is fine for tests and benchmarks; production-size
audits run in the audit store (ClickHouse) instead.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import connections

from apps.sharding.ids import bucket_of
from apps.sharding.moves import buckets_ever_moved
from apps.sharding.routing import alias_for_id, shard_aliases

TRANSFER_KINDS = ("debit", "credit", "refund")


@dataclass
class CurrencyTotals:
    balances: int = 0
    deposits: int = 0
    withdrawals: int = 0
    in_flight: int = 0

    @property
    def expected_balances(self) -> int:
        return self.deposits - self.withdrawals - self.in_flight


@dataclass
class LedgerReport:
    violations: list[str] = field(default_factory=list)
    totals: dict[str, CurrencyTotals] = field(default_factory=lambda: defaultdict(CurrencyTotals))
    wallets: int = 0
    entries: int = 0
    transfers: int = 0
    transfers_by_status: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def ok(self) -> bool:
        return not self.violations


def _rows(alias: str, sql: str) -> list[tuple]:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


@dataclass
class _Movement:
    kind: str
    wallet_id: uuid.UUID
    amount: int
    currency: str


def check_ledger() -> LedgerReport:
    report = LedgerReport()
    movements: dict[str, list[_Movement]] = defaultdict(list)
    outcomes: dict[str, tuple[uuid.UUID, str]] = {}
    transfers: list[tuple] = []
    for alias in shard_aliases():
        _check_wallets(alias, report)
        for reference, kind, wallet_id, amount, currency in _rows(
            alias,
            "SELECT e.reference, e.kind, e.wallet_id, e.amount_minor, w.currency FROM ledger_entry e"
            " JOIN ledger_wallet w ON w.id = e.wallet_id WHERE e.kind IN ('debit', 'credit', 'refund')"
            " AND sharding_serves(w.id)",
        ):
            movements[reference].append(_Movement(kind, wallet_id, amount, currency))
        for transfer_id, payee_id, outcome in _rows(
            alias, "SELECT transfer_id, payee_id, outcome FROM transfers_payee_credit WHERE sharding_serves(payee_id)"
        ):
            outcomes[str(transfer_id)] = (payee_id, outcome)
        for row in _rows(
            alias,
            "SELECT id, payer_id, payee_id, amount_minor, currency, status FROM transfers_transfer"
            " WHERE sharding_serves(id)",
        ):
            if alias_for_id(row[0]) != alias or alias_for_id(row[1]) != alias:
                report.violations.append(f"transfer {row[0]} is on {alias}, not on its payer's shard")
            transfers.append(row)

    moved_buckets = buckets_ever_moved()
    for transfer_id, payer_id, payee_id, amount, currency, status in transfers:
        report.transfers += 1
        report.transfers_by_status[status] += 1
        moves = movements.pop(str(transfer_id), [])
        _check_transfer(
            report, transfer_id, payer_id, payee_id, amount, currency, status, moves, outcomes, moved_buckets
        )  # fmt: skip
    for reference, moves in movements.items():
        kinds = sorted(m.kind for m in moves)
        report.violations.append(f"entries {kinds} reference {reference}, which is no transfer")

    for currency, totals in sorted(report.totals.items()):
        if totals.balances != totals.expected_balances:
            report.violations.append(
                f"{currency}: balances {totals.balances} != deposits {totals.deposits} - withdrawals "
                f"{totals.withdrawals} - in flight {totals.in_flight} = {totals.expected_balances}"
            )
    return report


def _check_wallets(alias: str, report: LedgerReport) -> None:
    for wallet_id, balance, last_seq, total, count, max_seq, currency in _rows(
        alias,
        "SELECT w.id, w.balance_minor, w.last_entry_seq, COALESCE(sum(e.amount_minor), 0), count(e.id),"
        " COALESCE(max(e.seq), 0), w.currency"
        " FROM ledger_wallet w LEFT JOIN ledger_entry e ON e.wallet_id = w.id WHERE sharding_serves(w.id)"
        " GROUP BY w.id",
    ):
        report.wallets += 1
        report.entries += count
        report.totals[currency].balances += balance
        if balance < 0:
            report.violations.append(f"wallet {wallet_id} has a negative balance {balance}")
        if balance != total:
            report.violations.append(f"wallet {wallet_id}: balance {balance} != sum of entries {total}")
        if not last_seq == count == max_seq:
            report.violations.append(
                f"wallet {wallet_id}: entry sequence broken (last {last_seq}, count {count}, max {max_seq})"
            )
        if alias_for_id(wallet_id) != alias:
            report.violations.append(f"wallet {wallet_id} is on {alias}, not on the shard of its bucket")
    for currency, kind, total in _rows(
        alias,
        "SELECT w.currency, e.kind, sum(e.amount_minor) FROM ledger_entry e"
        " JOIN ledger_wallet w ON w.id = e.wallet_id WHERE e.kind IN ('deposit', 'withdrawal')"
        " AND sharding_serves(w.id) GROUP BY 1, 2",
    ):
        if kind == "deposit":
            report.totals[currency].deposits += total
        else:
            report.totals[currency].withdrawals -= total


# Allowed (debits, credits, refunds) counts per status.
_ALLOWED_COUNTS = {
    "pending": {(0, 0, 0)},
    "debited": {(1, 0, 0), (1, 1, 0)},
    "refunding": {(1, 0, 0), (1, 0, 1)},
    "completed": {(1, 1, 0)},
    "failed": {(0, 0, 0), (1, 0, 1)},
}


def _check_transfer(
    report: LedgerReport,
    transfer_id: uuid.UUID,
    payer_id: uuid.UUID,
    payee_id: uuid.UUID,
    amount: int,
    currency: str,
    status: str,
    moves: list[_Movement],
    outcomes: dict[str, tuple[uuid.UUID, str]],
    moved_buckets: set[int],
) -> None:
    expected = {"debit": (payer_id, -amount), "credit": (payee_id, amount), "refund": (payer_id, amount)}
    counts = dict.fromkeys(TRANSFER_KINDS, 0)
    for move in moves:
        counts[move.kind] += 1
        if (move.wallet_id, move.amount) != expected[move.kind] or move.currency != currency:
            report.violations.append(
                f"transfer {transfer_id}: {move.kind} of {move.amount} {move.currency} on {move.wallet_id}"
                f" does not match the transfer"
            )
    shape = (counts["debit"], counts["credit"], counts["refund"])
    if shape not in _ALLOWED_COUNTS[status]:
        report.violations.append(
            f"transfer {transfer_id} is {status} but has {shape[0]} debit(s), {shape[1]} credit(s),"
            f" {shape[2]} refund(s)"
        )
    if shape[0] == 1 and shape[1] == 0 and shape[2] == 0:
        report.totals[currency].in_flight += amount
    outcome = outcomes.get(str(transfer_id))
    # Payer and payee on one shard when the transfer ran: no payee outcome was written. A
    # move may since have put them on different shards; then only a recorded outcome is held.
    moved = bucket_of(payer_id) in moved_buckets or bucket_of(payee_id) in moved_buckets
    if alias_for_id(payer_id) != alias_for_id(payee_id) and not (moved and outcome is None and shape[2] == 0):
        credited = outcome is not None and outcome[1] == "credited"
        if credited != (shape[1] == 1):
            report.violations.append(f"transfer {transfer_id}: payee outcome {outcome} disagrees with its entries")
        if status == "failed" and shape[2] == 1 and (outcome is None or outcome[1] != "rejected"):
            report.violations.append(f"transfer {transfer_id} was refunded without a recorded payee rejection")
