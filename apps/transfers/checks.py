"""check_ledger: verify the money invariants across every shard.

- no negative balance; each wallet's balance equals the sum of its entries, and its
  entry sequence has no gaps;
- every transfer's entries match its status (debited at most once, credited at most once,
  refunded only if debited and never credited), and no debit/credit/refund lacks a transfer;
- a cross-shard credit agrees with the payee's recorded outcome;
- per currency: sum(balances) = deposits - withdrawals - money in flight, where money in
  flight is computed from the transfers (debited, neither credited nor refunded);
- refunds: a transfer's `amount_refunded` is the sum of its refunds that did not fail, each
  refund's record agrees with its refund transfer (original, amount, and no settled record
  contradicting a terminal transfer: a succeeded refund whose transfer failed, or the reverse).

It streams: each shard's transfers, transfer entries and payee outcomes are read through
server-side cursors ordered by transfer id (one REPEATABLE READ snapshot per shard) and
merged, so memory stays flat whatever the ledger's size (10 million entries: see
docs/PERFORMANCE.md); wallets are checked by one aggregate per shard, streamed likewise.
"""

from __future__ import annotations

import heapq
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from itertools import groupby

from django.db import connections, transaction

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
    held: int = 0  # open holds: out of their wallets' balances, still their payers' money

    @property
    def expected_balances(self) -> int:
        return self.deposits - self.withdrawals - self.in_flight - self.held


@dataclass
class LedgerReport:
    violations: list[str] = field(default_factory=list)
    totals: dict[str, CurrencyTotals] = field(default_factory=lambda: defaultdict(CurrencyTotals))
    wallets: int = 0
    entries: int = 0
    transfers: int = 0
    holds: int = 0
    refunds: int = 0
    transfers_by_status: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    violation_count: int = 0

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    def add(self, violation: str) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_VIOLATIONS_LISTED:
            self.violations.append(violation)


MAX_VIOLATIONS_LISTED = 1000  # beyond this a report counts them: a broken ledger must not exhaust memory
_FETCH = 5000


def _rows(alias: str, sql: str) -> Iterator[tuple]:
    """The rows of `sql` on `alias`, fetched in chunks from a server-side cursor."""
    with connections[alias].chunked_cursor() as cursor:
        cursor.execute(sql)
        while chunk := cursor.fetchmany(_FETCH):
            yield from chunk


@dataclass
class _Movement:
    kind: str
    wallet_id: uuid.UUID
    amount: int
    currency: str


# Each stream is ordered by the transfer id as text: a UUID's canonical text sorts as its
# bytes do, and COLLATE "C" keeps the entries' text references in the same order whatever
# the database's collation, so the streams of every shard merge in one pass.
_TRANSFERS_SQL = (
    "SELECT t.id::text AS key, t.id, t.payer_id, t.payee_id, t.amount_minor, t.currency, t.status, t.refund_of"
    " FROM transfers_transfer t WHERE sharding_serves(t.id) ORDER BY t.id"
)
# Refund records, keyed by their refund transfer's id (on the original's shard, often another).
_REFUNDS_SQL = (
    "SELECT r.transfer_id::text AS key, r.original_id, r.amount_minor, r.status FROM refunds_refund r"
    " WHERE sharding_serves(r.id) ORDER BY r.transfer_id"
)
_MOVEMENTS_SQL = (
    "SELECT e.reference, e.kind, e.wallet_id, e.amount_minor, w.currency FROM ledger_entry e"
    " JOIN ledger_wallet w ON w.id = e.wallet_id WHERE e.kind IN ('debit', 'credit', 'refund')"
    ' AND sharding_serves(w.id) ORDER BY e.reference COLLATE "C"'
)
_OUTCOMES_SQL = (
    "SELECT c.transfer_id::text AS key, c.payee_id, c.outcome FROM transfers_payee_credit c"
    " WHERE sharding_serves(c.payee_id) ORDER BY c.transfer_id"
)
_TRANSFER, _MOVEMENT, _OUTCOME, _REFUND = 0, 1, 2, 3


def _tagged(alias: str, sql: str, tag: int) -> Iterator[tuple[str, int, str, tuple]]:
    for row in _rows(alias, sql):
        yield row[0], tag, alias, row[1:]


@contextmanager
def _snapshots(aliases: list[str]) -> Iterator[None]:
    """One transaction per shard, REPEATABLE READ where this call opens it: a shard's
    streams then read one snapshot (its server-side cursors need a transaction anyway)."""
    with ExitStack() as stack:
        for alias in aliases:
            opens = not connections[alias].in_atomic_block
            stack.enter_context(transaction.atomic(using=alias))
            if opens:
                with connections[alias].cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield


def check_ledger() -> LedgerReport:
    report = LedgerReport()
    aliases = shard_aliases()
    moved_buckets = buckets_ever_moved()
    with _snapshots(aliases):
        for alias in aliases:
            _check_wallets(alias, report)
            _check_holds(alias, report)
            _check_refunded_amounts(alias, report)
        streams = [
            _tagged(alias, sql, tag)
            for alias in aliases
            for sql, tag in (
                (_TRANSFERS_SQL, _TRANSFER),
                (_MOVEMENTS_SQL, _MOVEMENT),
                (_OUTCOMES_SQL, _OUTCOME),
                (_REFUNDS_SQL, _REFUND),
            )
        ]
        merged = heapq.merge(*streams, key=lambda item: item[0])
        for reference, items in groupby(merged, key=lambda item: item[0]):
            _check_reference(report, reference, list(items), moved_buckets)

    for currency, totals in sorted(report.totals.items()):
        if totals.balances != totals.expected_balances:
            report.add(
                f"{currency}: balances {totals.balances} != deposits {totals.deposits} - withdrawals "
                f"{totals.withdrawals} - in flight {totals.in_flight} - held {totals.held} = {totals.expected_balances}"
            )
    return report


def _check_reference(
    report: LedgerReport, reference: str, items: list[tuple[str, int, str, tuple]], moved_buckets: set[int]
) -> None:
    """Everything every shard holds about one transfer id: its row, its entries, its payee outcome."""
    transfers = [(alias, row) for _, tag, alias, row in items if tag == _TRANSFER]
    moves = [_Movement(*row) for _, tag, _, row in items if tag == _MOVEMENT]
    outcomes = [row for _, tag, _, row in items if tag == _OUTCOME]
    refunds = [row for _, tag, _, row in items if tag == _REFUND]
    if refunds:
        _check_refund(report, reference, refunds, transfers[0][1] if transfers else None)
    if not transfers:
        if moves:
            kinds = sorted(m.kind for m in moves)
            report.add(f"entries {kinds} reference {reference}, which is no transfer")
        return
    if len(transfers) > 1:
        report.add(f"transfer {reference} is stored on {sorted(alias for alias, _ in transfers)}")
    if len(outcomes) > 1:
        report.add(f"transfer {reference} has {len(outcomes)} payee outcomes")
    outcome = outcomes[0] if outcomes else None
    alias, (transfer_id, payer_id, payee_id, amount, currency, status, _) = transfers[0]
    if alias_for_id(transfer_id) != alias or alias_for_id(payer_id) != alias:
        report.add(f"transfer {transfer_id} is on {alias}, not on its payer's shard")
    report.transfers += 1
    report.transfers_by_status[status] += 1
    _check_transfer(report, transfer_id, payer_id, payee_id, amount, currency, status, moves, outcome, moved_buckets)


# Settled records that no run of the saga could leave beside a terminal refund transfer.
_CONTRADICTIONS = {("succeeded", "failed"), ("failed", "completed")}


def _check_refund(report: LedgerReport, reference: str, records: list[tuple], transfer: tuple | None) -> None:
    """A refund's record against its transfer. Shards are read at slightly different instants,
    so a record may lag its transfer (or the reverse): only contradictions are violations."""
    report.refunds += len(records)
    if len(records) > 1:
        report.add(f"refund transfer {reference} has {len(records)} refund records")
    original_id, amount, record_status = records[0]
    if transfer is None:
        return  # not created yet (its request died after the reservation: the resumption job creates it)
    _, _, _, transfer_amount, _, transfer_status, refund_of = transfer
    if refund_of != original_id or transfer_amount != amount:
        report.add(
            f"refund transfer {reference} refunds {refund_of} for {transfer_amount}; its record says"
            f" {original_id} for {amount}"
        )
    if (record_status, transfer_status) in _CONTRADICTIONS:
        report.add(f"refund {reference} is {record_status} but its transfer {transfer_status}")


_REFUNDED_AMOUNTS_SQL = """
SELECT t.id, t.amount_minor, t.amount_refunded, COALESCE(sum(r.amount_minor) FILTER (WHERE r.status <> 'failed'), 0)
  FROM refunds_refund r JOIN transfers_transfer t ON t.id = r.original_id
 WHERE sharding_serves(r.id)
 GROUP BY t.id
"""


def _check_refunded_amounts(alias: str, report: LedgerReport) -> None:
    """An original's `amount_refunded` is what its refunds not failed reserved (same shard, one snapshot)."""
    for original_id, amount, refunded, reserved in _rows(alias, _REFUNDED_AMOUNTS_SQL):
        if refunded != reserved:
            report.add(f"transfer {original_id}: amount_refunded {refunded} but its live refunds hold {reserved}")
        if reserved > amount:
            report.add(f"transfer {original_id} of {amount} is refunded {reserved}")


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
            report.add(f"wallet {wallet_id} has a negative balance {balance}")
        if balance != total:
            report.add(f"wallet {wallet_id}: balance {balance} != sum of entries {total}")
        if not last_seq == count == max_seq:
            report.add(f"wallet {wallet_id}: entry sequence broken (last {last_seq}, count {count}, max {max_seq})")
        if alias_for_id(wallet_id) != alias:
            report.add(f"wallet {wallet_id} is on {alias}, not on the shard of its bucket")
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


# A hold's own entries, per status: (hold entries, release entries).
_HOLD_ENTRIES = {"held": (1, 0), "captured": (1, 1), "voided": (1, 1), "expired": (1, 1), "failed": (0, 0)}
_HOLDS_SQL = """
SELECT h.id, h.status, h.amount_minor, h.currency,
       count(e.id) FILTER (WHERE e.kind = 'hold'), COALESCE(sum(e.amount_minor) FILTER (WHERE e.kind = 'hold'), 0),
       count(e.id) FILTER (WHERE e.kind = 'release'),
       COALESCE(sum(e.amount_minor) FILTER (WHERE e.kind = 'release'), 0)
  FROM holds_hold h
  LEFT JOIN ledger_entry e ON e.wallet_id = h.payer_id AND e.reference = h.id::text AND e.kind IN ('hold', 'release')
 WHERE sharding_serves(h.id)
 GROUP BY h.id
"""
# Hold and release entries whose hold is not on this shard (their references are hold ids).
_ORPHAN_HOLD_ENTRIES_SQL = """
SELECT e.reference, e.kind FROM ledger_entry e
 WHERE e.kind IN ('hold', 'release') AND sharding_serves(e.wallet_id)
   AND NOT EXISTS (SELECT 1 FROM holds_hold h WHERE h.id = e.reference::uuid AND h.payer_id = e.wallet_id)
"""


def _check_holds(alias: str, report: LedgerReport) -> None:
    """Each hold's entries match its status and amount; open holds count as held money."""
    for hold_id, status, amount, currency, holds, held, releases, released in _rows(alias, _HOLDS_SQL):
        report.holds += 1
        if (holds, releases) != _HOLD_ENTRIES[status]:
            report.add(f"hold {hold_id} is {status} but has {holds} hold and {releases} release entries")
        elif (holds and held != -amount) or (releases and released != amount):
            report.add(f"hold {hold_id}: entries of {held} and {released} do not match its amount {amount}")
        if status == "held":
            report.totals[currency].held += amount
    for reference, kind in _rows(alias, _ORPHAN_HOLD_ENTRIES_SQL):
        report.add(f"a {kind} entry references {reference}, which is no hold of its wallet")


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
    outcome: tuple[uuid.UUID, str] | None,
    moved_buckets: set[int],
) -> None:
    expected = {"debit": (payer_id, -amount), "credit": (payee_id, amount), "refund": (payer_id, amount)}
    counts = dict.fromkeys(TRANSFER_KINDS, 0)
    for move in moves:
        counts[move.kind] += 1
        if (move.wallet_id, move.amount) != expected[move.kind] or move.currency != currency:
            report.add(
                f"transfer {transfer_id}: {move.kind} of {move.amount} {move.currency} on {move.wallet_id}"
                f" does not match the transfer"
            )
    shape = (counts["debit"], counts["credit"], counts["refund"])
    if shape not in _ALLOWED_COUNTS[status]:
        report.add(
            f"transfer {transfer_id} is {status} but has {shape[0]} debit(s), {shape[1]} credit(s),"
            f" {shape[2]} refund(s)"
        )
    if shape[0] == 1 and shape[1] == 0 and shape[2] == 0:
        report.totals[currency].in_flight += amount
    # Payer and payee on one shard when the transfer ran: no payee outcome was written. A
    # move may since have put them on different shards; then only a recorded outcome is held.
    moved = bucket_of(payer_id) in moved_buckets or bucket_of(payee_id) in moved_buckets
    if alias_for_id(payer_id) != alias_for_id(payee_id) and not (moved and outcome is None and shape[2] == 0):
        credited = outcome is not None and outcome[1] == "credited"
        if credited != (shape[1] == 1):
            report.add(f"transfer {transfer_id}: payee outcome {outcome} disagrees with its entries")
        if status == "failed" and shape[2] == 1 and (outcome is None or outcome[1] != "rejected"):
            report.add(f"transfer {transfer_id} was refunded without a recorded payee rejection")
