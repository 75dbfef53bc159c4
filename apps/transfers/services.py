"""Writes for transfers after their creation (`creation`): attempts, parking, re-driving, operator compensation."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, InterfaceError, OperationalError, connections, transaction
from django.utils import timezone

from apps.sharding.fence import check_missing_are_served
from apps.sharding.routing import alias_for_id
from apps.transfers.errors import ShardUnavailable, TransferNotFound, TransferNotInFlight
from apps.transfers.models import (
    IN_FLIGHT_STATUSES,
    CreditOutcome,
    FailureReason,
    PayeeCredit,
    Transfer,
    TransferStatus,
)
from apps.transfers.saga import finish_step, transition

log = logging.getLogger(__name__)


def enqueue_advance(transfer_id: uuid.UUID) -> None:
    """Trigger the saga. Best effort: if the broker is down, the sweeper re-drives the transfer."""
    from apps.transfers.tasks import advance_transfer

    try:
        advance_transfer.apply_async(args=[str(transfer_id)])
    except Exception:
        log.exception("could not enqueue transfer", extra={"transfer_id": str(transfer_id)})


def transfer_begin_attempt(transfer_id: uuid.UUID) -> int | None:
    """Count an attempt before running it; returns the attempts so far, None if terminal or parked.

    Counted in the database before the step runs, so an attempt that kills its worker (the
    message is redelivered, the count in the message is not) still counts towards parking.
    """
    alias = alias_for_id(transfer_id)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "UPDATE transfers_transfer SET attempts = attempts + 1, updated_at = %s"
            " WHERE id = %s AND status IN ('pending', 'debited', 'refunding') AND parked_at IS NULL"
            " RETURNING attempts",
            [timezone.now(), transfer_id],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def transfer_give_back_attempt(transfer_id: uuid.UUID, reason: str) -> bool:
    """An attempt that only waited for a bucket move does not count towards parking.

    A fence is not a failure: a long switch, or a fence a stalled mover left, must never park
    the transfers it holds up (the operator ends the fence; they then complete).
    """
    alias = alias_for_id(transfer_id)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "UPDATE transfers_transfer SET attempts = attempts - 1, last_error = %s, updated_at = %s"
            " WHERE id = %s AND attempts > 0 AND status IN ('pending', 'debited', 'refunding') AND parked_at IS NULL",
            [reason[:2000], timezone.now(), transfer_id],
        )
        return cursor.rowcount == 1


def transfer_record_error(transfer_id: uuid.UUID, error: str) -> None:
    """The last attempt's error, for operators; bumping updated_at keeps the sweeper off while retries are pending."""
    alias = alias_for_id(transfer_id)
    Transfer.objects.using(alias).filter(id=transfer_id, status__in=IN_FLIGHT_STATUSES).update(
        last_error=error[:2000], updated_at=timezone.now()
    )


def transfers_claim_stalled(*, alias: str, older_than: timedelta, limit: int) -> list[uuid.UUID]:
    """In-flight, not parked, untouched for `older_than`: claimed for one re-drive by touching them.

    The touch (updated_at = now) is what makes the sweeper send each stalled transfer at
    most once per stall window, however long no worker takes the messages.
    """
    now = timezone.now()
    with connections[alias].cursor() as cursor:
        cursor.execute(
            """
            UPDATE transfers_transfer SET updated_at = %s
             WHERE id IN (SELECT id FROM transfers_transfer
                           WHERE status IN ('pending', 'debited', 'refunding') AND parked_at IS NULL
                             AND updated_at < %s AND sharding_serves(id)
                           ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED)
            RETURNING id
            """,
            [now, now - older_than, limit],
        )
        return [row[0] for row in cursor.fetchall()]


def transfer_park(transfer_id: uuid.UUID, error: str) -> bool:
    """Dead-letter a transfer whose steps keep failing: the sweeper leaves it to an operator."""
    alias = alias_for_id(transfer_id)
    parked = (
        Transfer.objects.using(alias)
        .filter(id=transfer_id, status__in=IN_FLIGHT_STATUSES, parked_at__isnull=True)
        .update(parked_at=timezone.now(), last_error=error[:2000], updated_at=timezone.now())
    )
    return parked == 1


def transfer_redrive(transfer_id: uuid.UUID) -> bool:
    """Un-park a transfer and trigger its saga again (an operator action)."""
    alias = alias_for_id(transfer_id)
    with transaction.atomic(using=alias):
        updated = (
            Transfer.objects.using(alias)
            .filter(id=transfer_id, status__in=IN_FLIGHT_STATUSES)
            .update(parked_at=None, attempts=0, updated_at=timezone.now())
        )
        if updated:
            transaction.on_commit(lambda: enqueue_advance(transfer_id), using=alias)
    return updated == 1


@dataclass(frozen=True)
class Compensation:
    """What an operator's force-compensation did. `outcome` is one of:
    `failed` (still pending: nothing had been debited), `refunded` (the payer got the debit
    back; the transfer failed) or `completed` (the payee had in fact been credited)."""

    transfer: Transfer
    outcome: str


def _fail_if_pending(transfer_id: uuid.UUID) -> tuple[Transfer, bool]:
    """pending -> failed under the row lock. Returns the transfer as it now stands and whether it was failed here."""
    alias = alias_for_id(transfer_id)
    with transaction.atomic(using=alias):
        served = ["sharding_serves(transfers_transfer.id)"]  # never decide from a copy a move left behind
        transfer = Transfer.objects.using(alias).select_for_update().filter(id=transfer_id).extra(where=served).first()  # noqa: S610 (constant SQL)
        if transfer is None:
            with connections[alias].cursor() as cursor:
                check_missing_are_served(cursor, [transfer_id])
            raise TransferNotFound(param="transfer_id")
        if transfer.status != TransferStatus.PENDING:
            return transfer, False
        # Nothing was debited yet, and the payer step cannot start while we hold the lock.
        transition(transfer, TransferStatus.FAILED, reason=FailureReason.OPERATOR_COMPENSATED)
    return transfer, True


def _payee_outcome_or_reject(transfer: Transfer) -> PayeeCredit:
    """On the payee's shard: the recorded outcome, or a committed rejection if there was none.

    The PayeeCredit primary key (the transfer id) admits one outcome: if the saga's credit
    step commits "credited" first, our insert fails and its outcome stands.
    """
    alias = alias_for_id(transfer.payee_id)
    existing = PayeeCredit.objects.using(alias).filter(transfer_id=transfer.id).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic(using=alias):
            PayeeCredit(
                transfer_id=transfer.id,
                payee_id=transfer.payee_id,
                amount_minor=transfer.amount_minor,
                outcome=CreditOutcome.REJECTED,
                reason=FailureReason.OPERATOR_COMPENSATED,
                created_at=timezone.now(),
            ).save(using=alias, force_insert=True)
    except IntegrityError:
        pass  # another writer won: re-read its outcome
    return PayeeCredit.objects.using(alias).get(transfer_id=transfer.id)


def transfer_force_compensate(transfer_id: uuid.UUID) -> Compensation:
    """End an in-flight transfer that cannot complete, following the saga's protocol (an operator action).

    - pending: nothing was debited; fail it (`operator_compensated`), no refund.
    - debited: on the payee's shard, commit a `rejected` PayeeCredit unless an outcome exists.
      If the payee was in fact `credited`, the transfer is completed instead, never refunded;
      if `rejected`, `finish_step` refunds the payer and fails it with the rejection's reason.
    - refunding: the rejection is already committed; finish the refund.
    Safe to run twice and concurrently with the saga. Raises TransferNotInFlight when it is
    already terminal, ShardUnavailable (nothing changed) when a shard it needs is down.
    """
    try:
        transfer, failed_here = _fail_if_pending(transfer_id)
    except (OperationalError, InterfaceError) as exc:
        raise ShardUnavailable(
            f"The transfer's shard {alias_for_id(transfer_id)} is unreachable; nothing was changed."
        ) from exc
    if failed_here:
        log.info("pending transfer failed by an operator", extra={"transfer_id": str(transfer_id)})
        return Compensation(transfer=transfer, outcome="failed")
    if transfer.is_terminal:
        raise TransferNotInFlight(f"The transfer is already {transfer.status}; nothing to compensate.")
    credit = None
    if transfer.status == TransferStatus.DEBITED:
        try:
            credit = _payee_outcome_or_reject(transfer)
        except (OperationalError, InterfaceError) as exc:
            raise ShardUnavailable(
                f"The payee's shard {alias_for_id(transfer.payee_id)} is unreachable; nothing was changed."
                " Retry when it is back."
            ) from exc
    try:
        transfer = finish_step(transfer_id, credit)
    except (OperationalError, InterfaceError) as exc:
        raise ShardUnavailable(
            f"The transfer's shard {alias_for_id(transfer_id)} is unreachable. The payee's outcome is recorded"
            f" ({credit.outcome if credit else 'rejected'}), so re-running this action, or the saga, finishes it."
        ) from exc
    outcome = "completed" if transfer.status == TransferStatus.COMPLETED else "refunded"
    log.info("transfer force-compensated", extra={"transfer_id": str(transfer_id), "outcome": outcome})
    return Compensation(transfer=transfer, outcome=outcome)
