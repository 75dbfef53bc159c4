"""Refunds: move a completed transfer's money back from its payee to its payer, at most its amount.

A refund runs in up to three transactions, each one shard, each safe to repeat:

1. On the original's shard: the reservation. One guarded UPDATE raises the original's
   `amount_refunded` only while it stays within the amount paid (concurrent refunds queue on
   the row; the loser is refused), and the refund's record is inserted with it, keyed by
   (client, original, Idempotency-Key) and naming the refund transfer's id in advance.
2. On the original payee's shard: the refund transfer's first step, by the transfer's own
   rules (`first_step`): the payee's wallet pays (funds, active, currency) or the refund
   transfer fails with the reason and nothing moves. The saga credits the original payer
   like any transfer; that credit (or its rejection) settles the record in its own
   transaction (the `refunds_settle` trigger).
3. On the original's shard, only when the debit was refused: the record is settled `failed`
   and the reservation given back (`refunds_settle`, the same SQL as the trigger).

When payee and payer share a shard, all of it is one transaction. A request that dies
between the steps is finished by its repeat (same key) or by the resumption job, which
takes the same path: the refund transfer's id is fixed by the record, so it is created at
most once.

Who may refund: the owner of the wallet that was paid, always (it is its money going back);
the client that made the transfer only where that wallet allows it (`payer_may_refund`, set
by its owner). A payer can never pull money back on its own say.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from django.db import DatabaseError, IntegrityError, connections, transaction
from django.utils import timezone

from apps.common.db import fast_cursor
from apps.common.errors import IdempotencyKeyReused
from apps.ledger.errors import WalletNotFound
from apps.ledger.models import Wallet
from apps.ledger.selectors import wallet_get
from apps.refunds.errors import (
    RefundExceedsRemaining,
    RefundNotAllowed,
    TransferFullyRefunded,
    TransferNotRefundable,
)
from apps.refunds.models import Refund, RefundStatus
from apps.sharding.ids import bucket_of, new_id
from apps.sharding.routing import alias_for_id, one_map
from apps.transfers.creation import request_drain
from apps.transfers.errors import TransferNotFound
from apps.transfers.first_step import GroupPlan, LockedWallet, lock_wallets, plan_first_step, write_plan
from apps.transfers.idempotency import fingerprint_of
from apps.transfers.models import Transfer, TransferStatus
from apps.transfers.selectors import transfer_get

log = logging.getLogger(__name__)

# Renders the refund transfer as the API answers it: (HTTP status, JSON text).
Render = Callable[[Transfer], tuple[int, str]]

_RESERVE_SQL = """
UPDATE transfers_transfer SET amount_refunded = amount_refunded + %(amount)s
 WHERE id = %(original)s AND status = 'completed' AND refund_of IS NULL
   AND amount_refunded + %(amount)s <= amount_minor
"""
_SETTLE_SQL = "SELECT refunds_settle(%s, %s, %s, %s)"


@dataclass(frozen=True)
class RefundRequest:
    client_id: int
    original_id: uuid.UUID
    amount_minor: int | None  # None: whatever remains refundable
    idempotency_key: str

    @property
    def fingerprint(self) -> str:
        return fingerprint_of({"refund_of": str(self.original_id), "amount_minor": self.amount_minor})


@dataclass(frozen=True)
class RefundAnswer:
    refund: Refund
    status: int
    body: str
    replayed: bool


def may_refund(client_id: int, original: Transfer, paid_wallet: Wallet) -> bool:
    """The rule of who may refund (see the module's docstring)."""
    if paid_wallet.owner_id == client_id:
        return True
    return original.client_id == client_id and paid_wallet.payer_may_refund


def refund_create(request: RefundRequest, *, render: Render) -> RefundAnswer:
    """Refund (part of) a completed transfer, once per key; a repeat replays the first answer."""
    original = transfer_get(transfer_id=request.original_id)
    try:
        paid_wallet: Wallet | None = wallet_get(wallet_id=original.payee_id)
    except WalletNotFound:
        paid_wallet = None  # a transfer to no wallet: it failed, and only its client knows of it
    if request.client_id not in (original.client_id, paid_wallet.owner_id if paid_wallet else None):
        raise TransferNotFound(param="transfer_id")  # neither side of it: it does not exist for this client
    with one_map():
        alias = alias_for_id(original.id)
        existing = _record(alias, request)
        if existing is not None:
            return _answer(existing, original, render)
        if paid_wallet is None:
            raise _refusal(original, request.amount_minor)
        if not may_refund(request.client_id, original, paid_wallet):
            raise RefundNotAllowed()
        try:
            refund = _reserve(alias, original, request)
        except IntegrityError:
            # A concurrent request with this key committed first: answer as its repeat.
            existing = _record(alias, request)
            if existing is None:
                raise
            return _answer(existing, original, render)
        return _answer(refund, original, render)


def _record(alias: str, request: RefundRequest) -> Refund | None:
    refund = (
        Refund.objects.using(alias)
        .filter(client_id=request.client_id, original_id=request.original_id, idempotency_key=request.idempotency_key)
        .first()
    )
    if refund is not None and refund.request_fingerprint != request.fingerprint:
        raise IdempotencyKeyReused(param="Idempotency-Key")
    return refund


def _refusal(original: Transfer, amount: int | None) -> Exception:
    """Why a reservation of `amount` (None: the rest) cannot be made on `original` as it is now."""
    if original.refund_of is not None:
        return TransferNotRefundable("A refund cannot itself be refunded.", param="transfer_id")
    if original.status != TransferStatus.COMPLETED:
        return TransferNotRefundable(
            f"Only a completed transfer can be refunded; this one is {original.status}.", param="transfer_id"
        )
    remaining = original.amount_minor - original.amount_refunded
    if remaining == 0:
        return TransferFullyRefunded()
    return RefundExceedsRemaining(
        f"{amount} is more than the {remaining} that remains refundable.", param="amount_minor"
    )


def _reserve(alias: str, original: Transfer, request: RefundRequest) -> Refund:
    """Steps 1 (and 2 and 3 on one shard): reserve the amount and record the refund."""
    now = timezone.now()
    remaining = original.amount_minor - original.amount_refunded
    amount = remaining if request.amount_minor is None else request.amount_minor
    if original.refund_of is not None or original.status != TransferStatus.COMPLETED or not 0 < amount <= remaining:
        raise _refusal(original, request.amount_minor)
    refund = Refund(
        id=new_id(bucket_of(original.id)), original_id=original.id, transfer_id=new_id(bucket_of(original.payee_id)),
        client_id=request.client_id, amount_minor=amount, status=RefundStatus.PENDING,
        idempotency_key=request.idempotency_key, request_fingerprint=request.fingerprint, created_at=now,
        updated_at=now,
    )  # fmt: skip
    same_shard = alias_for_id(original.payee_id) == alias
    with transaction.atomic(using=alias):
        # Same shard: the wallets first, in the order every credit locks them before its
        # settlement touches the original (no deadlock between a refund and a credit).
        wallets = _lock_pair(alias, original) if same_shard else None
        with fast_cursor(alias) as cursor:
            cursor.execute(_RESERVE_SQL, {"amount": amount, "original": original.id})
            if cursor.rowcount != 1:  # a concurrent refund reserved first, or the original changed
                raise _refusal(Transfer.objects.using(alias).get(id=original.id), request.amount_minor)
        refund.save(using=alias, force_insert=True)
        if wallets is not None:
            _first_step(alias, refund, original, wallets)
    return refund


def _lock_pair(alias: str, original: Transfer) -> dict[uuid.UUID, LockedWallet]:
    """The refund's payer (the original payee) and, when on this shard, its payee (the original payer)."""
    payees = {original.payer_id} if alias_for_id(original.payer_id) == alias else set()
    return lock_wallets(alias, {original.payee_id} | payees, payee_ids=payees)


def _first_step(alias: str, refund: Refund, original: Transfer, wallets: dict[uuid.UUID, LockedWallet]) -> Transfer:
    """Step 2 in the caller's transaction on `alias` (the original payee's shard), wallets locked:
    the refund transfer's first step, unless it exists already (a repeat)."""
    existing = Transfer.objects.using(alias).filter(id=refund.transfer_id).first()
    if existing is not None:
        return existing
    now = timezone.now()
    transfer = Transfer(
        id=refund.transfer_id, client_id=refund.client_id, payer_id=original.payee_id, payee_id=original.payer_id,
        amount_minor=refund.amount_minor, currency=original.currency, status=TransferStatus.PENDING,
        request_fingerprint=refund.request_fingerprint, refund_of=original.id, created_at=now, updated_at=now,
    )  # fmt: skip
    plan = GroupPlan()
    plan_first_step(transfer, wallets, plan, now)
    write_plan(alias, plan, wallets, [], now)
    if transfer.is_terminal and alias_for_id(original.id) == alias:  # one shard: settled with it
        _settle(alias, transfer, now)
    return transfer


def _settle(alias: str, transfer: Transfer, now: datetime) -> None:
    """Step 3: settle the record of a refund transfer that ended in its first step (no credit to settle it)."""
    outcome = RefundStatus.SUCCEEDED if transfer.status == TransferStatus.COMPLETED else RefundStatus.FAILED
    with fast_cursor(alias) as cursor:
        cursor.execute(_SETTLE_SQL, [transfer.id, outcome, transfer.failure_reason, now])


def _advance(refund: Refund, original: Transfer) -> Transfer:
    """Steps 2 and 3 for a recorded refund, from wherever it stopped; the refund transfer as it is."""
    alias = alias_for_id(original.payee_id)
    with transaction.atomic(using=alias):
        transfer = _first_step(alias, refund, original, _lock_pair(alias, original))
    if transfer.status == TransferStatus.DEBITED:
        request_drain(alias)
    elif transfer.status == TransferStatus.FAILED and not _credit_decided(transfer):
        # Refused at its debit, or failed by an operator: no credit settles it, this does.
        original_alias = alias_for_id(original.id)
        with transaction.atomic(using=original_alias):
            _settle(original_alias, transfer, timezone.now())
    return transfer


def _credit_decided(transfer: Transfer) -> bool:
    """Whether the original payer's shard holds the refund transfer's credit outcome (which settled it)."""
    with connections[alias_for_id(transfer.payee_id)].cursor() as cursor:
        cursor.execute("SELECT 1 FROM transfers_payee_credit WHERE transfer_id = %s", [transfer.id])
        return cursor.fetchone() is not None


def _answer(refund: Refund, original: Transfer, render: Render) -> RefundAnswer:
    """The key's answer: as stored (a replay), or, for the first request or one finishing what a
    dead request left, the refund carried as far as it goes now, its answer stored once (an
    answer stored meanwhile by a concurrent repeat wins, and is a replay)."""
    if refund.response_status is not None:
        return RefundAnswer(refund, refund.response_status, cast(str, refund.response_body), replayed=True)
    transfer = _advance(refund, original)
    status, body = render(transfer)
    alias = alias_for_id(refund.id)
    stored = Refund.objects.using(alias).filter(id=refund.id, response_status__isnull=True)
    if stored.update(response_status=status, response_body=body):
        return RefundAnswer(refund, status, body, replayed=False)
    first = Refund.objects.using(alias).get(id=refund.id)
    return RefundAnswer(refund, cast(int, first.response_status), cast(str, first.response_body), replayed=True)


def refund_resume(refund_id: uuid.UUID) -> Refund:
    """Carry a recorded refund on (its request died after the reservation, or its refused debit
    was not settled); a no-op for one that is running or settled."""
    with one_map():
        refund = Refund.objects.using(alias_for_id(refund_id)).get(id=refund_id)
        if refund.status == RefundStatus.PENDING:
            original = Transfer.objects.using(alias_for_id(refund.original_id)).get(id=refund.original_id)
            _advance(refund, original)
            refund.refresh_from_db(using=alias_for_id(refund_id))
    return refund


def refunds_resume_stalled(alias: str, *, older_than: timedelta, limit: int = 200) -> int:
    """Resume this shard's refunds pending for longer than `older_than` (served buckets, the pending index)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT id FROM refunds_refund WHERE status = 'pending' AND created_at < now() - make_interval(secs => %s)"
            " AND sharding_serves(id) ORDER BY created_at LIMIT %s",
            [older_than.total_seconds(), limit],
        )
        stalled = [row[0] for row in cursor.fetchall()]
    settled = 0
    for refund_id in stalled:
        try:
            if refund_resume(refund_id).status != RefundStatus.PENDING:
                settled += 1
        except DatabaseError:  # its other shard is down or moving: a later run
            log.warning("refund cannot be resumed now", extra={"refund_id": str(refund_id)}, exc_info=True)
    return settled
