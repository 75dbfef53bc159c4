"""Writes for transfers: creation with idempotency, parking, re-driving, operator compensation, purging."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import F
from django.utils import timezone

from apps.common.db import fast_cursor
from apps.common.errors import IdempotencyKeyReused
from apps.ledger.errors import CurrencyMismatch
from apps.ledger.selectors import wallet_currency
from apps.sharding.ids import bucket_of, new_id
from apps.sharding.routing import alias_for_id, shard_aliases
from apps.transfers.errors import IdempotencyRequestInProgress, ShardUnavailable, TransferNotFound, TransferNotInFlight
from apps.transfers.models import (
    IN_FLIGHT_STATUSES,
    CreditOutcome,
    FailureReason,
    IdempotencyRecord,
    PayeeCredit,
    Transfer,
    TransferStatus,
)
from apps.transfers.saga import Event, finish_step, insert_transfer, run_payer_step, transition

log = logging.getLogger(__name__)

# Renders the response stored for replays from the transfer and its status history:
# (HTTP status, JSON text).
Render = Callable[[Transfer, "list[Event]"], tuple[int, str]]


@dataclass(frozen=True)
class TransferRequest:
    client_id: int
    payer_id: uuid.UUID
    payee_id: uuid.UUID
    amount_minor: int
    currency: str
    idempotency_key: str

    @property
    def fingerprint(self) -> str:
        body = {
            "from": str(self.payer_id),
            "to": str(self.payee_id),
            "amount_minor": self.amount_minor,
            "currency": self.currency,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TransferCreated:
    transfer: Transfer
    record: IdempotencyRecord
    replayed: bool


def request_drain(alias: str) -> None:
    """Ask a worker to run the saga for the debited transfers of `alias` (best effort)."""
    from apps.transfers.tasks import request_drain as trigger

    trigger(alias)


def enqueue_advance(transfer_id: uuid.UUID) -> None:
    """Trigger the saga. Best effort: if the broker is down, the sweeper re-drives the transfer."""
    from apps.transfers.tasks import advance_transfer

    try:
        advance_transfer.apply_async(args=[str(transfer_id)])
    except Exception:
        log.exception("could not enqueue transfer", extra={"transfer_id": str(transfer_id)})


def _replay(request: TransferRequest, alias: str) -> TransferCreated | None:
    record = (
        IdempotencyRecord.objects.using(alias)
        .filter(client_id=request.client_id, payer_id=request.payer_id, key=request.idempotency_key)
        .select_related("transfer")
        .first()
    )
    if record is None:
        return None
    if record.fingerprint != request.fingerprint:
        raise IdempotencyKeyReused(param="Idempotency-Key")
    if record.response_status is None:
        abandoned_before = timezone.now() - timedelta(seconds=settings.TRANSFER_MAX_WAIT_SECONDS * 2)
        if record.created_at > abandoned_before:
            raise IdempotencyRequestInProgress(param="Idempotency-Key")
    return TransferCreated(transfer=record.transfer, record=record, replayed=True)


def transfer_create(request: TransferRequest, *, render: Render, defer_response: bool = False) -> TransferCreated:
    """Create a transfer on the payer's shard and run its first step in the same transaction.

    The transaction debits the payer (and, on one shard, credits the payee), inserts the
    transfer in the status that reached with its events, and inserts the idempotency record
    with the response: a repeat (even a concurrent one, which waits on the record's unique
    index and then rolls back) replays that response. With `defer_response` the response is
    stored later (`transfer_store_response`); until then a repeat gets 409.
    """
    currency = wallet_currency(wallet_id=request.payer_id, owner_id=request.client_id)
    if currency != request.currency:
        raise CurrencyMismatch(f"The paying wallet holds {currency}, not {request.currency}.", param="currency")
    alias = alias_for_id(request.payer_id)
    transfer = new_transfer(request)
    try:
        with transaction.atomic(using=alias):
            record = run_first_step(request, transfer, render=render, defer_response=defer_response)
    except IntegrityError:
        replay = _replay(request, alias)
        if replay is None:
            raise  # not a duplicate key: a real constraint violation
        return replay
    if transfer.status == TransferStatus.DEBITED:
        request_drain(alias)
    record.transfer = transfer
    return TransferCreated(transfer=transfer, record=record, replayed=False)


def new_transfer(request: TransferRequest, now: datetime | None = None) -> Transfer:
    now = now or timezone.now()
    return Transfer(
        id=new_id(bucket_of(request.payer_id)),
        client_id=request.client_id,
        payer_id=request.payer_id,
        payee_id=request.payee_id,
        amount_minor=request.amount_minor,
        currency=request.currency,
        status=TransferStatus.PENDING,
        request_fingerprint=request.fingerprint,
        created_at=now,
        updated_at=now,
    )


def run_first_step(
    request: TransferRequest, transfer: Transfer, *, render: Render, defer_response: bool
) -> IdempotencyRecord:
    """Inside a transaction on the payer's shard: payer step, transfer row, idempotency record."""
    alias = alias_for_id(transfer.id)
    now = transfer.created_at
    events = [Event(None, TransferStatus.PENDING, None, now), *run_payer_step(transfer, now)]
    insert_transfer(transfer, events)
    record = IdempotencyRecord(
        client_id=request.client_id,
        payer_id=request.payer_id,
        key=request.idempotency_key,
        fingerprint=request.fingerprint,
        transfer_id=transfer.id,
        created_at=now,
    )
    if not defer_response:
        record.response_status, record.response_body = render(transfer, events)
    # Last, so that a duplicate key aborts the whole transaction, debit included.
    with fast_cursor(alias) as cursor:
        cursor.execute(_INSERT_RECORD_SQL, [
            record.client_id, record.payer_id, record.key, record.fingerprint, record.transfer_id,
            record.response_status, record.response_body, record.created_at,
        ])  # fmt: skip
        record.id = cursor.fetchone()[0]
    record._state.db, record._state.adding = alias, False  # saved, on this shard
    return record


_INSERT_RECORD_SQL = """
INSERT INTO transfers_idempotency (client_id, payer_id, key, fingerprint, transfer_id, response_status,
    response_body, created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id
"""


def transfer_store_response(record: IdempotencyRecord, status: int, body: str) -> None:
    """Store the response of a deferred (waiting) request, once; `record` then holds what is stored.

    If another request stored one first (it took this one for abandoned), that response wins
    and is the one to send, so that every answer for the key is the same.
    """
    alias = alias_for_id(record.payer_id)
    stored = (
        IdempotencyRecord.objects.using(alias)
        .filter(id=record.id, response_status__isnull=True)
        .update(response_status=status, response_body=body)
    )
    if stored:
        record.response_status, record.response_body = status, body
    else:
        record.refresh_from_db(using=alias, fields=["response_status", "response_body"])


def transfer_record_attempt(transfer_id: uuid.UUID, error: str) -> None:
    """Note a failed attempt; bumping updated_at keeps the sweeper off while retries are pending."""
    alias = alias_for_id(transfer_id)
    Transfer.objects.using(alias).filter(id=transfer_id, status__in=IN_FLIGHT_STATUSES).update(
        attempts=F("attempts") + 1, last_error=error[:2000], updated_at=timezone.now()
    )


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
        transfer = Transfer.objects.using(alias).select_for_update().filter(id=transfer_id).first()
        if transfer is None:
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


def idempotency_records_purge(*, older_than: timedelta) -> int:
    """Delete idempotency records past their retention, on every shard."""
    cutoff = timezone.now() - older_than
    deleted = 0
    for alias in shard_aliases():
        count, _ = IdempotencyRecord.objects.using(alias).filter(created_at__lt=cutoff).delete()
        deleted += count
    return deleted
