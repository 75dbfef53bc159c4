"""The transfer saga: idempotent steps, each one transaction on one shard.

    pending --payer_step--> debited --payee_step (payee shard)--> credited | rejected
    debited --finish_step--> completed                (payee credited)
    debited --finish_step--> refunding --> failed     (payee rejected: payer refunded)
    pending --payer_step--> failed                    (payer cannot pay)

Same-shard transfers: payer_step debits, credits and completes in one transaction.
Every step first locks the transfer row and checks its status, and every transition is
`UPDATE ... WHERE status = <expected>`, so a late or repeated step is a no-op. The
database is the truth: `transfer_advance` re-reads the state and runs whatever is next,
so a crash anywhere resumes from the last committed step.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from apps.ledger.errors import CurrencyMismatch, InsufficientFunds, WalletFrozen, WalletNotFound
from apps.ledger.services import wallet_credit, wallet_debit, wallet_refund
from apps.observability.metrics import count_transition, timed_saga_step
from apps.sharding.routing import alias_for_id
from apps.transfers.errors import StaleTransition
from apps.transfers.faults import crash_point
from apps.transfers.models import CreditOutcome, FailureReason, PayeeCredit, Transfer, TransferStatus

# What a wallet can refuse; anything else (connection lost, shard down) is transient.
REFUSALS = (InsufficientFunds, WalletFrozen, WalletNotFound, CurrencyMismatch)

_PAYER_REASONS = {
    InsufficientFunds: FailureReason.INSUFFICIENT_FUNDS,
    WalletFrozen: FailureReason.PAYER_FROZEN,
    WalletNotFound: FailureReason.PAYER_NOT_FOUND,
    CurrencyMismatch: FailureReason.PAYER_CURRENCY_MISMATCH,
}
_PAYEE_REASONS = {
    WalletFrozen: FailureReason.PAYEE_FROZEN,
    WalletNotFound: FailureReason.PAYEE_NOT_FOUND,
    CurrencyMismatch: FailureReason.PAYEE_CURRENCY_MISMATCH,
}

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


class _Refused(Exception):
    def __init__(self, reason: FailureReason) -> None:
        self.reason = reason


def transition(
    transfer: Transfer, to: TransferStatus, *, reason: str | None = None, now: datetime | None = None
) -> None:
    """Move `transfer` from its current status to `to`, recording the event; StaleTransition if it moved."""
    alias = alias_for_id(transfer.id)
    params = {"to": to, "reason": reason, "now": now or timezone.now(), "id": transfer.id, "from": transfer.status}
    with connections[alias].cursor() as cursor:
        cursor.execute(_TRANSITION_SQL, params)
        if cursor.rowcount != 1:
            raise StaleTransition(f"transfer {transfer.id} is no longer {transfer.status}")
    transfer.status = to
    transfer.updated_at = params["now"]
    if reason:
        transfer.failure_reason = reason
    # Counted once committed: a rolled-back transition never happened.
    counted_reason = transfer.failure_reason if to == TransferStatus.FAILED else None
    transaction.on_commit(lambda: count_transition(to, counted_reason), using=alias)


def record_event(transfer: Transfer, *, now: datetime) -> None:
    """The creation event (no previous status)."""
    with connections[alias_for_id(transfer.id)].cursor() as cursor:
        cursor.execute(
            "INSERT INTO transfers_event (transfer_id, from_status, to_status, reason, created_at)"
            " VALUES (%s, NULL, %s, NULL, %s)",
            [transfer.id, transfer.status, now],
        )


def _lock(transfer_id: uuid.UUID) -> Transfer:
    return Transfer.objects.using(alias_for_id(transfer_id)).select_for_update().get(id=transfer_id)


def _debit(transfer: Transfer) -> None:
    try:
        wallet_debit(
            wallet_id=transfer.payer_id,
            transfer_id=transfer.id,
            amount_minor=transfer.amount_minor,
            currency=transfer.currency,
        )
    except REFUSALS as exc:
        raise _Refused(_PAYER_REASONS[type(exc)]) from exc


def _credit(transfer: Transfer) -> None:
    try:
        wallet_credit(
            wallet_id=transfer.payee_id,
            transfer_id=transfer.id,
            amount_minor=transfer.amount_minor,
            currency=transfer.currency,
        )
    except REFUSALS as exc:
        raise _Refused(_PAYEE_REASONS[type(exc)]) from exc


def run_payer_step(transfer: Transfer) -> None:
    """pending -> debited (cross-shard), completed (same shard) or failed. Call inside a
    transaction on the transfer's shard, with the row locked or freshly inserted."""
    if transfer.status != TransferStatus.PENDING:
        return
    alias = alias_for_id(transfer.id)
    same_shard = alias_for_id(transfer.payee_id) == alias
    try:
        with transaction.atomic(using=alias):  # savepoint: the debit and credit stand or fall together
            _debit(transfer)
            if same_shard:
                _credit(transfer)
    except _Refused as refused:
        transition(transfer, TransferStatus.FAILED, reason=refused.reason)
        return
    transition(transfer, TransferStatus.DEBITED)
    if same_shard:
        transition(transfer, TransferStatus.COMPLETED)


@timed_saga_step("payer")
def payer_step(transfer_id: uuid.UUID) -> Transfer:
    """Saga step 1 on the payer's shard (see run_payer_step)."""
    with transaction.atomic(using=alias_for_id(transfer_id)):
        transfer = _lock(transfer_id)
        run_payer_step(transfer)
    return transfer


@timed_saga_step("payee")
def payee_step(transfer: Transfer) -> PayeeCredit:
    """Saga step 2 on the payee's shard: credit the payee, or record why not. Final once committed.

    The PayeeCredit row (primary key = transfer id) is written in the same transaction as
    the credit, so a transfer is credited or rejected, never both, however often this runs.
    """
    alias = alias_for_id(transfer.payee_id)
    existing = PayeeCredit.objects.using(alias).filter(transfer_id=transfer.id).first()
    if existing is not None:
        return existing
    outcome, reason = CreditOutcome.CREDITED, None
    try:
        with transaction.atomic(using=alias):
            try:
                _credit(transfer)
            except _Refused as refused:
                outcome, reason = CreditOutcome.REJECTED, refused.reason
            PayeeCredit(
                transfer_id=transfer.id,
                payee_id=transfer.payee_id,
                amount_minor=transfer.amount_minor,
                outcome=outcome,
                reason=reason,
                created_at=timezone.now(),
            ).save(using=alias, force_insert=True)
    except IntegrityError:
        pass  # a concurrent run of this step committed first: its outcome stands
    return PayeeCredit.objects.using(alias).get(transfer_id=transfer.id)


@timed_saga_step("finish")
def finish_step(transfer_id: uuid.UUID, credit: PayeeCredit | None) -> Transfer:
    """Saga step 3 on the payer's shard: complete, or refund the payer and fail."""
    alias = alias_for_id(transfer_id)
    with transaction.atomic(using=alias):
        transfer = _lock(transfer_id)
        if transfer.status == TransferStatus.DEBITED and credit is not None:
            if credit.outcome == CreditOutcome.CREDITED:
                transition(transfer, TransferStatus.COMPLETED)
                return transfer
            transition(transfer, TransferStatus.REFUNDING, reason=credit.reason)
        if transfer.status == TransferStatus.REFUNDING:
            wallet_refund(wallet_id=transfer.payer_id, transfer_id=transfer.id, amount_minor=transfer.amount_minor)
            transition(transfer, TransferStatus.FAILED)
    return transfer


def transfer_advance(transfer_id: uuid.UUID) -> Transfer:
    """Run the transfer's remaining steps from its stored state until it is terminal.

    Each step commits on its own; transient errors propagate (the task retries them).
    """
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
