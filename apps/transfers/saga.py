"""The transfer saga: idempotent steps, each one transaction on one shard.

    (API) payer step, on the payer's shard, in the creating transaction:
        debit the payer                     -> debited    (or failed: insufficient_funds, payer_frozen...)
        same shard: also credit the payee   -> completed  (or failed, nothing moved)
    payee step, on the payee's shard: credit the payee and record PayeeCredit "credited",
        or record PayeeCredit "rejected" (payee frozen / missing / other currency)
    finish step, on the payer's shard: credited -> completed; rejected -> refunding -> refund -> failed

Every transition is `UPDATE ... WHERE status = <expected>` recorded with an event, ledger
entries are unique per (wallet, transfer, kind) and PayeeCredit's primary key is the transfer
id, so a late or repeated step is a no-op. The database is the truth: `transfer_advance`
re-reads the state and runs whatever is next, so a crash anywhere resumes from the last
committed step. `drain_debited` runs the payee and finish steps for many transfers of one
shard at once: one transaction per payee shard and one completion statement.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from django.db import DatabaseError, IntegrityError, connections, transaction
from django.utils import timezone

from apps.common.db import fast_cursor
from apps.common.faults import crash_point
from apps.ledger.acceptance import ACCEPTS_CREDIT_SQL
from apps.ledger.errors import (
    BalanceLimitExceeded,
    CurrencyMismatch,
    InsufficientFunds,
    WalletFrozen,
    WalletNotFound,
)
from apps.ledger.services import IN_FLIGHT_OUT_SQL, wallet_credit, wallet_refund
from apps.observability.metrics import DRAINED_TRANSFERS, count_transition, time_saga_step, timed_saga_step
from apps.sharding.ids import bucket_of, new_id
from apps.sharding.routing import alias_for_id, one_map
from apps.transfers.errors import StaleTransition
from apps.transfers.models import CreditOutcome, FailureReason, PayeeCredit, Transfer, TransferStatus

log = logging.getLogger(__name__)

# What a wallet can refuse; anything else (connection lost, shard down) is transient.
REFUSALS = (InsufficientFunds, WalletFrozen, WalletNotFound, CurrencyMismatch, BalanceLimitExceeded)

_PAYEE_REASONS = {
    WalletFrozen: FailureReason.PAYEE_FROZEN,
    WalletNotFound: FailureReason.PAYEE_NOT_FOUND,
    CurrencyMismatch: FailureReason.PAYEE_CURRENCY_MISMATCH,
    BalanceLimitExceeded: FailureReason.PAYEE_BALANCE_LIMIT,
}


@dataclass(frozen=True)
class Event:
    from_status: str | None
    to_status: str
    reason: str | None
    at: datetime


_TRANSITION_SQL = """
WITH moved AS (
    UPDATE transfers_transfer
       SET status = %(to)s, failure_reason = COALESCE(%(reason)s, failure_reason), updated_at = %(now)s
     WHERE id = %(id)s AND status = %(from)s
 RETURNING id
)
INSERT INTO transfers_event (transfer_id, from_status, to_status, reason, created_at)
SELECT id, %(from)s, %(to)s, %(reason)s, %(now)s FROM moved
"""

_INSERT_SQL = """
WITH created AS (
    INSERT INTO transfers_transfer (id, client_id, payer_id, payee_id, amount_minor, currency, status,
        failure_reason, request_fingerprint, attempts, last_error, parked_at, created_at, updated_at)
    VALUES (%(id)s, %(client_id)s, %(payer_id)s, %(payee_id)s, %(amount)s, %(currency)s, %(status)s,
        %(reason)s, %(fingerprint)s, 0, '', NULL, %(created)s, %(updated)s)
    RETURNING id
)
INSERT INTO transfers_event (transfer_id, from_status, to_status, reason, created_at)
SELECT created.id, e.from_status, e.to_status, e.reason, e.at
  FROM created, jsonb_to_recordset(%(events)s::jsonb) AS e(ord int, from_status text, to_status text, reason text,
       at timestamptz)
 ORDER BY e.ord
"""

# The payee step in one statement: credit (guarded) + ledger entry + PayeeCredit "credited".
# No row back means: already decided, or the payee refuses (then the slow path records why).
_CREDIT_SQL = """
WITH moved AS (
    UPDATE ledger_wallet
       SET balance_minor = balance_minor + %(amount)s, last_entry_seq = last_entry_seq + 1, updated_at = %(now)s
     WHERE id = %(payee)s AND {ACCEPTS} AND status = 'active' AND currency = %(currency)s
       AND balance_minor::numeric + %(amount)s + {IN_FLIGHT} <= 9223372036854775807
       AND NOT EXISTS (SELECT 1 FROM transfers_payee_credit WHERE transfer_id = %(tid)s)
 RETURNING id, balance_minor, last_entry_seq
), entry AS (
    INSERT INTO ledger_entry (id, wallet_id, seq, reference, kind, amount_minor, balance_after_minor, created_at)
    SELECT %(entry_id)s, id, last_entry_seq, %(reference)s, 'credit', %(amount)s, balance_minor, %(now)s FROM moved
    RETURNING wallet_id
)
INSERT INTO transfers_payee_credit (transfer_id, payee_id, amount_minor, outcome, reason, created_at)
SELECT %(tid)s, wallet_id, %(amount)s, 'credited', NULL, %(now)s FROM entry
RETURNING transfer_id
""".replace("{IN_FLIGHT}", IN_FLIGHT_OUT_SQL.format(wallet="%(payee)s")).replace("{ACCEPTS}", ACCEPTS_CREDIT_SQL)
# Before _CREDIT_SQL, in the same transaction: with the payees' rows locked, its sum of their
# money in flight cannot miss a debit that committed while it waited (see ledger.services).
_LOCK_PAYEES_SQL = "SELECT 1 FROM ledger_wallet WHERE id = ANY(%s) ORDER BY id FOR UPDATE"

# Stamped with the statement's own time, not the drain's start: a transfer's `updated_at`
# says when it completed, so submit-to-terminal latency includes the drain's run.
_COMPLETE_SQL = """
WITH done AS (
    UPDATE transfers_transfer SET status = 'completed', updated_at = clock_timestamp()
     WHERE id = ANY(%(ids)s) AND status = 'debited'
 RETURNING id, updated_at
)
INSERT INTO transfers_event (transfer_id, from_status, to_status, reason, created_at)
SELECT id, 'debited', 'completed', NULL, updated_at FROM done
"""


def transition(
    transfer: Transfer, to: TransferStatus, *, reason: str | None = None, now: datetime | None = None
) -> None:
    """Move `transfer` from its current status to `to`, recording the event; StaleTransition if it moved."""
    alias = alias_for_id(transfer.id)
    params = {"to": to, "reason": reason, "now": now or timezone.now(), "id": transfer.id, "from": transfer.status}
    with fast_cursor(alias) as cursor:
        cursor.execute(_TRANSITION_SQL, params)
        if cursor.rowcount != 1:
            raise StaleTransition(f"transfer {transfer.id} is no longer {transfer.status}")
    transfer.status = to
    transfer.updated_at = cast(datetime, params["now"])
    if reason:
        transfer.failure_reason = reason
    # Counted once committed: a rolled-back transition never happened.
    counted_reason = transfer.failure_reason if to == TransferStatus.FAILED else None
    transaction.on_commit(lambda: count_transition(to, counted_reason), using=alias)


def insert_transfer(transfer: Transfer, events: list[Event]) -> None:
    """Insert a new transfer in the status its first step reached, with every event on the way."""
    import json

    params = {
        "id": transfer.id,
        "client_id": transfer.client_id,
        "payer_id": transfer.payer_id,
        "payee_id": transfer.payee_id,
        "amount": transfer.amount_minor,
        "currency": transfer.currency,
        "status": transfer.status,
        "reason": transfer.failure_reason,
        "fingerprint": transfer.request_fingerprint,
        "created": transfer.created_at,
        "updated": transfer.updated_at,
        "events": json.dumps(
            [
                {"ord": i, "from_status": e.from_status, "to_status": e.to_status, "reason": e.reason,
                 "at": e.at.isoformat()}
                for i, e in enumerate(events)
            ]
        ),
    }  # fmt: skip
    alias = alias_for_id(transfer.id)
    with fast_cursor(alias) as cursor:
        cursor.execute(_INSERT_SQL, params)
    count_events_on_commit(alias, [events])


def count_events_on_commit(alias: str, histories: list[list[Event]]) -> None:
    """Count every transition (all events after "pending") once the transaction commits."""
    counts: dict[tuple[str, str | None], int] = defaultdict(int)
    for events in histories:
        for event in events[1:]:
            counts[(event.to_status, event.reason if event.to_status == TransferStatus.FAILED else None)] += 1
    if counts:
        transaction.on_commit(lambda: [count_transition(s, r, n) for (s, r), n in counts.items()], using=alias)  # type: ignore[func-returns-value]


def _lock(alias: str, transfer_id: uuid.UUID) -> Transfer:
    """The transfer's row, locked in the caller's transaction on `alias` (never looked up anew)."""
    return Transfer.objects.using(alias).select_for_update().get(id=transfer_id)


@timed_saga_step("payer")
def payer_step(transfer_id: uuid.UUID) -> Transfer:
    """The first step for a transfer stored as `pending`, by the rules of `first_step` (a no-op otherwise)."""
    from apps.transfers.first_step import run_stored_first_step

    alias = alias_for_id(transfer_id)
    with transaction.atomic(using=alias):
        transfer = _lock(alias, transfer_id)
        if transfer.status == TransferStatus.PENDING:
            run_stored_first_step(transfer, timezone.now())
    return transfer


def _credit_params(transfer: Transfer, now: datetime) -> dict[str, Any]:
    return {
        "amount": transfer.amount_minor,
        "now": now,
        "payee": transfer.payee_id,
        "currency": transfer.currency,
        "tid": transfer.id,
        "entry_id": new_id(bucket_of(transfer.payee_id)),
        "reference": str(transfer.id),
        "client": transfer.client_id,
        "refund": transfer.refund_of is not None,
    }


@timed_saga_step("payee")
def payee_step(transfer: Transfer) -> PayeeCredit:
    """Saga step 2 on the payee's shard: credit the payee, or record why not. Final once committed.

    The PayeeCredit row (primary key = transfer id) is written in the same transaction as
    the credit, so a transfer is credited or rejected, never both, however often this runs.
    """
    alias = alias_for_id(transfer.payee_id)
    now = timezone.now()
    try:
        with transaction.atomic(using=alias), fast_cursor(alias) as cursor:
            cursor.execute(_LOCK_PAYEES_SQL, [[transfer.payee_id]])
            cursor.execute(_CREDIT_SQL, _credit_params(transfer, now))
            if cursor.fetchone() is not None:
                return PayeeCredit(
                    transfer_id=transfer.id,
                    payee_id=transfer.payee_id,
                    amount_minor=transfer.amount_minor,
                    outcome=CreditOutcome.CREDITED,
                    created_at=now,
                )
    except IntegrityError:
        pass  # a concurrent run committed first: its outcome stands
    existing = PayeeCredit.objects.using(alias).filter(transfer_id=transfer.id).first()
    if existing is not None:
        return existing
    # Not credited and no outcome yet: the payee refuses. Record why, once.
    try:
        with transaction.atomic(using=alias):
            try:
                wallet_credit(
                    wallet_id=transfer.payee_id,
                    transfer_id=transfer.id,
                    amount_minor=transfer.amount_minor,
                    currency=transfer.currency,
                    client_id=transfer.client_id,
                    refund=transfer.refund_of is not None,
                    alias=alias,
                )
                outcome, reason = CreditOutcome.CREDITED, None  # the payee became able meanwhile
            except REFUSALS as exc:
                if type(exc) not in _PAYEE_REASONS:
                    # Not a payee's refusal (e.g. a status read mid-change): try again later.
                    raise
                outcome, reason = CreditOutcome.REJECTED, _PAYEE_REASONS[type(exc)]
            PayeeCredit(
                transfer_id=transfer.id,
                payee_id=transfer.payee_id,
                amount_minor=transfer.amount_minor,
                outcome=outcome,
                reason=reason,
                created_at=timezone.now(),
            ).save(using=alias, force_insert=True)
    except IntegrityError:
        pass
    return PayeeCredit.objects.using(alias).get(transfer_id=transfer.id)


@timed_saga_step("finish")
def finish_step(transfer_id: uuid.UUID, credit: PayeeCredit | None) -> Transfer:
    """Saga step 3 on the payer's shard: complete, or refund the payer and fail."""
    alias = alias_for_id(transfer_id)
    with transaction.atomic(using=alias):
        transfer = _lock(alias, transfer_id)
        if transfer.status == TransferStatus.DEBITED and credit is not None:
            if credit.outcome == CreditOutcome.CREDITED:
                transition(transfer, TransferStatus.COMPLETED)
                return transfer
            transition(transfer, TransferStatus.REFUNDING, reason=credit.reason)
        if transfer.status == TransferStatus.REFUNDING:
            wallet_refund(
                wallet_id=transfer.payer_id, transfer_id=transfer.id, amount_minor=transfer.amount_minor, alias=alias
            )
            transition(transfer, TransferStatus.FAILED)
    return transfer


def transfer_advance(transfer_id: uuid.UUID) -> Transfer:
    """Run the transfer's remaining steps from its stored state until it is terminal.

    Each step commits on its own; transient errors propagate (the task retries them).
    """
    with one_map():
        return _advance(transfer_id)


def _advance(transfer_id: uuid.UUID) -> Transfer:
    alias = alias_for_id(transfer_id)
    transfer = Transfer.objects.using(alias).get(id=transfer_id)
    while not transfer.is_terminal:
        if transfer.status == TransferStatus.PENDING:
            transfer = payer_step(transfer_id)
            crash_point("after_debit")
        elif transfer.status == TransferStatus.DEBITED:
            credit = payee_step(transfer)
            crash_point("after_credit")
            transfer = finish_step(transfer_id, credit)
        else:  # refunding: the rejection is already recorded on the payee's shard
            transfer = finish_step(transfer_id, None)
    return transfer


@dataclass
class DrainResult:
    claimed: int
    completed: int
    left_over: list[uuid.UUID]  # to run one by one: refused, contended, or transient errors
    transient: list[uuid.UUID]  # of those, the ones whose payee shard failed


def _credit_group(payee_alias: str, transfers: list[Transfer], now: datetime) -> set[uuid.UUID]:
    """Credit many payees on one shard in one transaction (statements pipelined); ids credited."""
    ordered = sorted(transfers, key=lambda t: t.payee_id)  # wallet rows locked in id order
    connection = connections[payee_alias]
    credited: set[uuid.UUID] = set()
    with transaction.atomic(using=payee_alias):
        connection.ensure_connection()
        with connection.wrap_database_errors, connection.connection.cursor() as cursor:
            cursor.execute(_LOCK_PAYEES_SQL, [sorted({t.payee_id for t in ordered})])
            cursor.executemany(_CREDIT_SQL, [_credit_params(t, now) for t in ordered], returning=True)
            while True:
                row = cursor.fetchone()
                if row is not None:
                    credited.add(row[0])
                if not cursor.nextset():
                    break
    crash_point("after_credit")
    return credited


# A drain's claim counts as the transfers' first attempt, committed before the work: if the
# work kills its worker, the redelivered drain does not take them again (drains take only
# attempts = 0); the sweeper hands them to their own task, which counts and parks.
_CLAIM_SQL = """
UPDATE transfers_transfer SET attempts = attempts + 1
 WHERE id IN (SELECT id FROM transfers_transfer
               WHERE status = 'debited' AND parked_at IS NULL AND attempts = 0 AND sharding_serves(id)
               ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING id
"""


def drain_debited(alias: str, *, limit: int = 500) -> DrainResult:
    """Run the payee and finish steps for up to `limit` debited transfers paid from `alias`.

    The transfers are claimed first (FOR UPDATE SKIP LOCKED: two drains never take the same
    ones; see _CLAIM_SQL), then locked in a transaction on the payer's shard that stays open while each payee shard's
    credits commit (one transaction per payee shard), then completes the credited ones in
    one statement. A crash in between leaves them `debited` with their PayeeCredit
    committed: the next run finds the outcome and completes them. Transfers that were
    refused, raced or hit an error are returned to be run one by one.
    """
    now = timezone.now()
    with fast_cursor(alias) as cursor:  # one statement: committed before any work starts
        cursor.execute(_CLAIM_SQL, [limit])
        ids = [row[0] for row in cursor.fetchall()]
    try:
        with one_map():  # where each payee's credit goes: one reading for the whole batch
            return _drain_claimed(alias, ids, now)
    except DatabaseError:
        # The payer's shard failed (down, or the range was fenced for a move) after the claim
        # committed: each claimed transfer goes to its own task, which finds its shard anew.
        log.warning("drain failed on its payer shard; its transfers are handed over", extra={"shard": alias})
        return DrainResult(len(ids), 0, list(ids), list(ids))


# Transfers already with their own tasks (attempts > 0), untouched since `before`, in keyset
# pages. Not claimed: their tasks still own them (attempts, backoff, parking); a batch only
# finishes what it can sooner, and a task that then runs finds its transfer terminal.
_RETRIED_SQL = """
SELECT id, updated_at FROM transfers_transfer
 WHERE status = 'debited' AND parked_at IS NULL AND attempts > 0 AND sharding_serves(id)
   AND updated_at < %s AND (updated_at, id) > (%s, %s)
 ORDER BY updated_at, id LIMIT %s
"""
RETRIED_IDLE_SECONDS = 1.0  # a transfer its task touched more recently is probably being run by it


def drain_retried(alias: str, *, limit: int = 500) -> int:
    """Finish, many per transaction, the debited transfers of `alias` whose tasks are retrying.

    After a shard's outage, every transfer that met it waits for its own task's next try,
    one by one behind a long queue (`make test-hosts` (d): about 10 a second, for minutes).
    Once one of them succeeds the shards answer again, and this runs the others by the drain's
    rules. Whatever it cannot finish (a shard still failing, a row its task holds, a refusal)
    is left to that task. Returns how many completed.
    """
    before = timezone.now() - timedelta(seconds=RETRIED_IDLE_SECONDS)
    after: tuple[datetime, uuid.UUID] = (datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))
    completed = 0
    while True:
        with fast_cursor(alias) as cursor:
            cursor.execute(_RETRIED_SQL, [before, *after, limit])
            rows = cursor.fetchall()
        if rows:
            with one_map():
                completed += _drain_claimed(alias, [row[0] for row in rows], timezone.now()).completed
        if len(rows) < limit:
            return completed
        after = (rows[-1][1], rows[-1][0])


def _drain_claimed(alias: str, ids: list[uuid.UUID], now: datetime) -> DrainResult:
    transient: list[uuid.UUID] = []
    with transaction.atomic(using=alias):
        claimed = list(
            Transfer.objects.using(alias)
            .select_for_update(skip_locked=True)
            .filter(id__in=ids, status=TransferStatus.DEBITED, parked_at__isnull=True)  # parked since: an operator's
            .order_by("updated_at")
        )
        by_payee_shard: dict[str, list[Transfer]] = defaultdict(list)
        for transfer in claimed:
            by_payee_shard[alias_for_id(transfer.payee_id)].append(transfer)
        credited: set[uuid.UUID] = set()
        for payee_alias, group in by_payee_shard.items():
            try:
                with time_saga_step("drain_credit"):
                    credited |= _credit_group(payee_alias, group, now)
            except IntegrityError:
                pass  # a concurrent step decided one of them: run this group one by one
            except DatabaseError:
                log.warning("payee shard failed during a drain", extra={"shard": payee_alias})
                connections[payee_alias].close()
                transient += [t.id for t in group]
        if credited:
            with connections[alias].cursor() as cursor:
                cursor.execute(_COMPLETE_SQL, {"ids": list(credited)})
                completed = cursor.rowcount
            transaction.on_commit(lambda: count_transition(TransferStatus.COMPLETED, None, completed), using=alias)
    # Every claimed transfer not credited here goes on, including those the lock above skipped
    # (another transaction held them for a moment): their claim counted as an attempt, so no
    # later drain takes them, and dropping them would leave them to the sweeper's stall window.
    left_over = [transfer_id for transfer_id in ids if transfer_id not in credited]
    DRAINED_TRANSFERS.labels(outcome="completed").inc(len(credited))
    DRAINED_TRANSFERS.labels(outcome="left_over").inc(len(left_over))
    return DrainResult(len(claimed), len(credited), left_over, transient)
