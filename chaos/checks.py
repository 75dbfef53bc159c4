"""The verdict: every answer the clients got, checked against the shards' final state.

What must hold (the mission's invariants, seen from outside):
- one key, one transfer: every answer for a key names the same transfer, a refused key has
  none, and every transfer on the shards belongs to a key some client sent;
- every accepted transfer is terminal (none in flight, none parked);
- what the clients saw is what happened: a terminal answer is the final status, any status
  seen on the way is in the transfer's history, and each intent ends as it must (a transfer
  to a frozen payee fails `payee_frozen`...);
- each transfer's ledger entries match its status: completed, a debit and a credit; failed
  after its debit, the debit and a refund; failed before it, nothing;
- each acknowledged deposit or withdrawal is applied exactly once, a refused one not at all;
- each hold is created once per key and ends as its client saw it: a capture answered 200
  captured the amount asked, by a transfer that exists; a void answered 200 voided it; a
  hold left alone is expired or still held, never captured or voided;
- each refund key is answered once with one refund (or a refusal that leaves none), which
  ends as its transfer does (succeeded: completed, failed: failed, for the same reason), pays
  the original's payer back from its payee, and no transfer is refunded beyond its amount
  (`amount_refunded` is what its succeeded refunds paid back);
- the bank test: every wallet's balance is what the acknowledged deposits, withdrawals and
  completed transfers make it, less what its open holds reserve, so money is conserved to
  the unit (nothing is in flight).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from chaos.history import Answer, History, Op
from chaos.snapshot import EntryRow, HoldRow, Snapshot, TransferRow
from chaos.workload import Wallets

# How each kind of transfer must end: (status, failure reason). The payer is debited before
# the payee is looked at, so a payer short of funds fails any transfer that way first.
_SHORT = ("failed", "insufficient_funds")
EXPECTED_ENDS = {
    "normal": {("completed", None), _SHORT},
    "too_large": {_SHORT},
    "frozen_payee": {("failed", "payee_frozen"), _SHORT},
    "currency_payee": {("failed", "payee_currency_mismatch"), _SHORT},
    # Refused as if it did not exist, whether or not it is also frozen (accepts_from comes first).
    "closed_payee": {("failed", "payee_not_found"), _SHORT},
}
MAX_LISTED = 20  # violations of one kind printed in full; the rest are counted


@dataclass
class Verdict:
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    counts: dict[str, Any] = field(default_factory=dict)

    def fail(self, check: str, message: str) -> None:
        self.violations[check].append(message)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())


def check_keys(verdict: Verdict, ops: list[Op], snap: Snapshot) -> dict[str, Op]:
    """One key, one transfer. Returns the transfer ops by transfer id."""
    by_transfer: dict[str, Op] = {}
    sent = {(op.wallet, op.key) for op in ops if op.kind == "transfer"}
    for op in ops:
        if op.kind != "transfer":
            continue
        ids = op.object_ids
        stored = snap.keys.get((op.wallet, op.key))
        if len(ids) > 1:
            verdict.fail("one key, one transfer", f"key {op.key} was answered with {len(ids)} transfers: {sorted(ids)}")
        final = op.final
        if final is None:
            verdict.fail(
                "every request answered", f"key {op.key} ({op.via}) got no definitive answer: {op.answers[-1:]}"
            )
        elif final.status not in (201, 202) and (ids or stored):
            verdict.fail(
                "one key, one transfer", f"key {op.key} was refused ({final.status} {final.error}) but has a transfer"
            )
        if ids and stored not in ids:
            verdict.fail("one key, one transfer", f"key {op.key}: answered {sorted(ids)}, stored {stored}")
        tid = stored or next(iter(ids), None)
        if tid is None:
            continue
        by_transfer[tid] = op
        row = snap.transfers.get(tid)
        if row is None:
            verdict.fail("one key, one transfer", f"key {op.key}: transfer {tid} is on no shard")
        elif (row.payer, row.payee, row.amount, row.currency) != (op.wallet, op.payee, op.amount, op.currency):
            verdict.fail("one key, one transfer", f"transfer {tid} does not match the request of key {op.key}")
    for (payer, key), tid in snap.keys.items():
        if (payer, key) not in sent:
            verdict.fail("one key, one transfer", f"transfer {tid} has key {key}, which no client sent from {payer}")
    keyed = set(snap.keys.values()) | {h.transfer_id for h in snap.holds.values() if h.transfer_id} | set(snap.refunds)
    for tid in snap.transfers:
        if tid not in keyed:
            verdict.fail("one key, one transfer", f"transfer {tid} has no idempotency record of the run's client")
    return by_transfer


def check_terminal(verdict: Verdict, snap: Snapshot) -> None:
    moving = sum(1 for row in snap.transfers.values() if not row.terminal and not row.parked)
    if moving:
        # Read first, as reports shorten each check's list: the shards are read one after another,
        # so a transfer that completes meanwhile can show its debit without its credit.
        verdict.fail(
            "every accepted transfer terminal",
            f"{moving} transfer(s) still in flight when the shards were read: the entry, balance and money"
            " checks below may count money in flight as missing",
        )
    for row in snap.transfers.values():
        if not row.terminal:
            state = "parked" if row.parked else "in flight"
            verdict.fail(
                "every accepted transfer terminal",
                f"transfer {row.id} {state} as {row.status} after {row.attempts} attempt(s): {row.last_error[:300]!r}",
            )


def check_seen(verdict: Verdict, by_transfer: dict[str, Op], history: History, snap: Snapshot) -> None:
    """What the clients saw agrees with what happened; each intent ends as it must."""
    for tid, op in by_transfer.items():
        row = snap.transfers.get(tid)
        if row is None or not row.terminal:
            continue
        for answer in op.answers:
            if answer.object_id != tid:
                continue
            if answer.status == 201 and (answer.state, answer.reason) != (row.status, row.reason):
                verdict.fail(
                    "answers match the outcome",
                    f"transfer {tid} was answered {answer.state}/{answer.reason} but ended {row.status}/{row.reason}",
                )
            if answer.state not in row.history:
                verdict.fail(
                    "answers match the outcome", f"transfer {tid} was answered {answer.state}, not in {row.history}"
                )
        if (row.status, row.reason) not in EXPECTED_ENDS[op.intent]:
            verdict.fail("transfers end as they must", f"{op.intent} transfer {tid} ended {row.status}/{row.reason}")
    for read in history.reads:
        if read.what == "transfer":
            row = snap.transfers.get(read.target)
            if row is not None and read.value not in row.history:
                verdict.fail(
                    "answers match the outcome",
                    f"transfer {read.target} was read as {read.value}, not in {row.history}",
                )
        elif isinstance(read.value, int) and read.value < 0:
            verdict.fail("no negative balance", f"wallet {read.target} was read with balance {read.value}")


def _expected_entries(row: TransferRow) -> list[EntryRow]:
    if row.status == "completed":
        return [EntryRow(row.payer, "debit", -row.amount), EntryRow(row.payee, "credit", row.amount)]
    if row.status == "failed" and "debited" in row.history:
        return [EntryRow(row.payer, "debit", -row.amount), EntryRow(row.payer, "refund", row.amount)]
    return []


def _sorted(entries: list[EntryRow]) -> list[EntryRow]:
    return sorted(entries, key=lambda e: (e.kind, e.wallet, e.amount))


def check_entries(verdict: Verdict, ops: list[Op], snap: Snapshot) -> None:
    for row in snap.transfers.values():
        if not row.terminal:
            continue
        found = [e for e in snap.entries.get(row.id, []) if e.kind in ("debit", "credit", "refund")]
        if _sorted(found) != _sorted(_expected_entries(row)):
            kinds = sorted(e.kind for e in found)
            verdict.fail("entries match the status", f"transfer {row.id} is {row.status} {row.history} with {kinds}")
    movement_keys = set()
    for op in ops:
        if op.kind not in ("deposit", "withdrawal"):
            continue
        movement_keys.add(op.key)
        found = [e for e in snap.entries.get(op.key, []) if e.kind == op.kind]
        sign = 1 if op.kind == "deposit" else -1
        final = op.final
        if len(op.object_ids) > 1:
            verdict.fail("movements applied once", f"{op.kind} {op.key} was answered with entries {op.object_ids}")
        if final is not None and final.status == 201:
            if found != [EntryRow(op.wallet, op.kind, sign * op.amount)]:
                verdict.fail("movements applied once", f"{op.kind} {op.key} was acknowledged; entries {found}")
        elif final is not None and found:
            verdict.fail("movements applied once", f"{op.kind} {op.key} was refused ({final.status}) yet applied")
        elif final is None:
            verdict.fail("every request answered", f"{op.kind} {op.key} got no definitive answer: {op.answers[-1:]}")
    for reference, entries in snap.entries.items():
        stray = [e for e in entries if e.kind in ("deposit", "withdrawal")]
        if stray and reference not in movement_keys:
            verdict.fail("movements applied once", f"entries {stray} reference {reference}, which no client sent")


def check_bank(verdict: Verdict, ops: list[Op], snap: Snapshot, wallets: list[str]) -> dict[str, dict[str, int]]:
    """Every wallet's balance from the clients' own records; money conserved per currency.

    Over every wallet on the shards, not only the run's: money appearing anywhere counts.
    """
    expected: Counter[str] = Counter()
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    currency = {w: snap.balances.get(w, (0, "?"))[1] for w in wallets}
    for wallet in snap.balances:
        if wallet not in currency:
            verdict.fail("balances as the clients' records make them", f"wallet {wallet} is not one of the run's")
    for op in ops:
        if op.kind not in ("deposit", "withdrawal") or op.final is None or op.final.status != 201:
            continue
        delta = op.amount if op.kind == "deposit" else -op.amount
        expected[op.wallet] += delta
        totals[currency[op.wallet]][op.kind + "s"] += op.amount
    for row in snap.transfers.values():
        if row.status == "completed":
            expected[row.payer] -= row.amount
            expected[row.payee] += row.amount
    for hold in snap.holds.values():
        if hold.status == "held":  # reserved: out of the balance, still the payer's money
            expected[hold.payer] -= hold.amount
            totals[currency.get(hold.payer, "?")]["held"] += hold.amount
    for wallet in sorted(set(wallets) | set(snap.balances)):
        balance, cur = snap.balances.get(wallet, (None, "?"))
        totals[cur]["balances"] += balance or 0
        if balance != expected[wallet]:
            verdict.fail(
                "balances as the clients' records make them",
                f"wallet {wallet} holds {balance}, expected {expected[wallet]} from acknowledged requests",
            )
    for cur, t in sorted(totals.items()):
        if t["balances"] + t["held"] != t["deposits"] - t["withdrawals"]:
            verdict.fail(
                "money conserved",
                f"{cur}: balances {t['balances']} + held {t['held']} != deposits {t['deposits']} - withdrawals"
                f" {t['withdrawals']} (off by {t['balances'] + t['held'] - t['deposits'] + t['withdrawals']})",
            )
    return {cur: dict(t) for cur, t in totals.items()}


def _answered_once(
    verdict: Verdict, op: Op, noun: str, stored: object | None, stored_id: str | None, accepted: tuple[int, ...]
) -> Answer | None:
    """A key's final answer when it accepted the request and names the object stored for it (`stored`,
    whose id is `stored_id`); None, having said what is wrong if anything, when there is no more to check."""
    final = op.final
    if final is None:
        verdict.fail("every request answered", f"{noun} {op.key} got no definitive answer: {op.answers[-1:]}")
        return None
    if len(op.object_ids) > 1:
        verdict.fail(f"one key, one {noun}", f"{noun} key {op.key} was answered with {noun}s {sorted(op.object_ids)}")
    if final.status not in accepted:
        if stored is not None:
            verdict.fail(f"one key, one {noun}", f"{noun} key {op.key} was refused ({final.error}) but has a {noun}")
        return None
    if stored is None or stored_id != final.object_id:
        verdict.fail(f"one key, one {noun}", f"{noun} key {op.key}: answered {final.object_id}, stored {stored}")
        return None
    return final


def check_holds(verdict: Verdict, ops: list[Op], snap: Snapshot) -> None:
    holds_by_key = {(h.payer, h.key): h for h in snap.holds.values()}
    resolutions = {op.hold_id: op for op in ops if op.kind in ("capture", "void")}
    sent = set()
    for op in (o for o in ops if o.kind == "hold"):
        sent.add((op.wallet, op.key))
        stored = holds_by_key.get((op.wallet, op.key))
        if _answered_once(verdict, op, "hold", stored, stored.id if stored else None, (201,)) is None:
            continue
        assert stored is not None  # noqa: S101 - _answered_once said so
        if (stored.payee, stored.amount) != (op.payee, op.amount):
            verdict.fail("one key, one hold", f"hold {stored.id} does not match the request of key {op.key}")
        if op.intent == "too_large" and (stored.status, stored.reason) != ("failed", "insufficient_funds"):
            verdict.fail("holds end as answered", f"hold {stored.id} for more than the payer has is {stored.status}")
        resolution = resolutions.get(stored.id)
        done = resolution.final if resolution is not None else None
        if resolution is not None and done is None:
            verdict.fail("every request answered", f"{resolution.kind} of hold {stored.id} got no definitive answer")
        if done is not None:
            _check_resolution(verdict, snap, stored, resolution, done)  # type: ignore[arg-type]
        elif resolution is None and stored.status in ("captured", "voided"):
            verdict.fail("holds end as answered", f"hold {stored.id} nobody resolved is {stored.status}")
    for (payer, key), hold in holds_by_key.items():
        if (payer, key) not in sent:
            verdict.fail("one key, one hold", f"hold {hold.id} has key {key}, which no client sent")


def _check_resolution(verdict: Verdict, snap: Snapshot, stored: HoldRow, resolution: Op, done: Answer) -> None:
    """Only its client resolves a hold (its expiry is an hour away): 200, or 409 `hold_not_held`
    after an attempt whose answer was lost, both mean the client's resolution is the one that won."""
    wanted = {"capture": "captured", "void": "voided"}[resolution.kind]
    if not (done.status == 200 or (done.status == 409 and done.error == "hold_not_held")):
        verdict.fail(
            "holds end as answered", f"{resolution.kind} of hold {stored.id} answered {done.status} {done.error}"
        )
        return
    if stored.status != wanted:
        verdict.fail(
            "holds end as answered", f"hold {stored.id}: {resolution.kind} answered {done.status}, is {stored.status}"
        )
        return
    if wanted != "captured":
        return
    if stored.captured != resolution.amount or (done.status == 200 and stored.transfer_id != done.object_id):
        verdict.fail(
            "holds end as answered",
            f"hold {stored.id} captured {stored.captured} by {stored.transfer_id}; the client asked"
            f" {resolution.amount} and was answered {done.object_id}",
        )
    if stored.transfer_id not in snap.transfers:
        verdict.fail("holds end as answered", f"hold {stored.id}'s transfer {stored.transfer_id} is on no shard")


# A settled refund and its transfer's end: the record settles in the transaction of the credit
# (or of the refused debit), so once every transfer is terminal nothing may differ.
_REFUND_ENDS = {"succeeded": "completed", "failed": "failed"}
# Refusals a refund may get: the original not completed (or a refund), nothing or not that
# much left, or a payee of another client that does not allow refunds by the payer.
_REFUND_REFUSALS = {
    (409, "transfer_not_refundable"), (409, "transfer_fully_refunded"), (422, "refund_exceeds_remaining"),
    (403, "refund_not_allowed"),
}  # fmt: skip


def check_refunds(verdict: Verdict, ops: list[Op], snap: Snapshot) -> None:
    """Each refund key answered once with one refund that ended as answered; no original refunded beyond its amount."""
    client_id = snap.client_id
    by_key = {(r.original, r.key): r for r in snap.refunds.values() if r.client == client_id}
    sent = set()
    for op in (o for o in ops if o.kind == "refund"):
        original_id = op.refund_of or ""
        sent.add((original_id, op.key))
        stored = by_key.get((original_id, op.key))
        last = op.final
        if last is not None and last.status not in (201, 202) and (last.status, last.error) not in _REFUND_REFUSALS:
            verdict.fail("refunds end as answered", f"refund {op.key} answered {last.status} {last.error}")
        final = _answered_once(verdict, op, "refund", stored, stored.transfer_id if stored else None, (201, 202))
        if final is None:
            continue
        assert stored is not None  # noqa: S101 - _answered_once said so
        row = snap.transfers.get(stored.transfer_id)
        if row is not None and final.state not in row.history:
            verdict.fail("answers match the outcome", f"refund {row.id} was answered {final.state}, not {row.history}")
        if op.amount and stored.amount != op.amount:
            verdict.fail("one key, one refund", f"refund {stored.transfer_id} of {stored.amount}; asked {op.amount}")
    refunded: Counter[str] = Counter()
    for refund in snap.refunds.values():
        if refund.client == client_id and (refund.original, refund.key) not in sent:
            verdict.fail(
                "one key, one refund", f"refund {refund.transfer_id} has key {refund.key}, which no client sent"
            )
        row, original = snap.transfers.get(refund.transfer_id), snap.transfers.get(refund.original)
        if row is None or original is None:
            verdict.fail("refunds end as answered", f"refund {refund.transfer_id} or its original is on no shard")
            continue
        if (row.refund_of, row.payer, row.payee, row.amount) != (original.id, original.payee, original.payer,
                                                                 refund.amount):  # fmt: skip
            verdict.fail("refunds end as answered", f"refund {row.id} does not pay back {original.id} as recorded")
        if _REFUND_ENDS.get(refund.status) != row.status:
            verdict.fail("refunds end as answered", f"refund {row.id} is {refund.status}, its transfer {row.status}")
        if refund.status == "failed" and refund.reason != row.reason:
            verdict.fail(
                "refunds end as answered", f"refund {row.id} failed {refund.reason}, its transfer {row.reason}"
            )
        if refund.status == "succeeded":
            refunded[refund.original] += refund.amount
    for row in snap.transfers.values():
        if row.amount_refunded != refunded[row.id] or refunded[row.id] > row.amount:
            verdict.fail(
                "refunds never exceed the amount",
                f"transfer {row.id} of {row.amount}: amount_refunded {row.amount_refunded}, refunds {refunded[row.id]}",
            )


def verify(history: History, snap: Snapshot, wallets: Wallets) -> Verdict:
    verdict = Verdict()
    for duplicate in snap.duplicates:
        verdict.fail("ownership", duplicate)
    ops = list(history.ops)
    by_transfer = check_keys(verdict, ops, snap)
    check_terminal(verdict, snap)
    check_seen(verdict, by_transfer, history, snap)
    check_entries(verdict, ops, snap)
    check_holds(verdict, ops, snap)
    check_refunds(verdict, ops, snap)
    verdict.counts["money"] = check_bank(verdict, ops, snap, list(wallets.shard_of))
    statuses = Counter(f"{r.status}/{r.reason}" if r.reason else r.status for r in snap.transfers.values())
    verdict.counts["transfers"] = dict(sorted(statuses.items()))
    verdict.counts["transfers_checked"] = len(snap.transfers)
    verdict.counts["holds"] = dict(sorted(Counter(h.status for h in snap.holds.values()).items()))
    verdict.counts["refunds"] = dict(sorted(Counter(r.status for r in snap.refunds.values()).items()))
    verdict.counts["cross_shard_transfers"] = sum(
        1 for r in snap.transfers.values() if wallets.shard_of.get(r.payer) != wallets.shard_of.get(r.payee)
    )
    verdict.counts["ops"] = dict(Counter(op.via for op in ops))
    verdict.counts["keys_answered_more_than_once"] = sum(
        1 for op in ops if sum(1 for a in op.answers if a.object_id) > 1
    )
    verdict.counts["keys_retried"] = sum(1 for op in ops if len(op.answers) > 1)
    verdict.counts["replays_seen"] = sum(1 for op in ops for a in op.answers if a.replayed)
    return verdict
