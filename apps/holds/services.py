"""Holds: create, capture, void, expire. Each is one transaction on the payer's shard.

Creation locks the payer's wallet and decides like a transfer's debit (found and owned,
currency, active, funds): held, the amount leaves the available balance with a `hold`
entry; refused, the hold is stored `failed` with the reason and nothing moves. Either way the
response is stored on the hold, so a repeat of the Idempotency-Key replays it byte for byte.

A resolution (capture, void, expiry) locks the hold row and requires it `held`: the first
to commit wins, the others get `HoldNotHeld` with the state it reached. It gives the amount
back with a `release` entry; a capture then debits the captured part as a new transfer to
the payee through the transfer's own first step (same-shard: credited at once), in the same
transaction, and the saga finishes it like any transfer. Locks are taken hold first, then
wallets in id order, as every transfer takes them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from apps.common.db import fast_cursor
from apps.common.errors import IdempotencyKeyReused
from apps.holds.errors import CaptureExceedsHold, HoldExpired, HoldNotFound, HoldNotHeld
from apps.holds.models import Hold, HoldStatus
from apps.holds.rendering import render_hold
from apps.ledger.errors import CurrencyMismatch, WalletFrozen, WalletNotFound
from apps.ledger.models import WalletStatus
from apps.sharding.ids import bucket_of, new_id
from apps.sharding.routing import alias_for_id, one_map
from apps.transfers.creation import TransferRequest, new_transfer, request_drain
from apps.transfers.first_step import (
    GroupPlan,
    lock_wallets,
    money_entry,
    payer_refusal,
    plan_first_step,
    wallets_to_lock,
    write_money,
    write_plan,
)
from apps.transfers.idempotency import fingerprint_of
from apps.transfers.models import TransferStatus

_CREATE_ATTEMPTS = 3


class HoldNotDue(Exception):
    """The expiry job found a hold whose time has not come by this process's clock: left for a later run."""


@dataclass(frozen=True)
class HoldRequest:
    client_id: int
    payer_id: uuid.UUID
    payee_id: uuid.UUID
    amount_minor: int
    currency: str
    expires_at: datetime
    idempotency_key: str
    expiry_given: bool = True  # False: the default expiry, which a repeat computes anew

    @property
    def fingerprint(self) -> str:
        body = {
            "from": str(self.payer_id),
            "to": str(self.payee_id),
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "expires_at": self.expires_at.isoformat() if self.expiry_given else None,
        }
        return fingerprint_of(body)


@dataclass(frozen=True)
class HoldCreated:
    hold: Hold
    status: int
    body: str
    replayed: bool


def default_expiry(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.HOLD_DEFAULT_SECONDS)


def latest_expiry(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.HOLD_MAX_SECONDS)


def _replay(existing: Hold, request: HoldRequest) -> HoldCreated:
    if existing.request_fingerprint != request.fingerprint:
        raise IdempotencyKeyReused(param="Idempotency-Key")
    return HoldCreated(existing, existing.response_status, existing.response_body, replayed=True)


def hold_create(request: HoldRequest) -> HoldCreated:
    """Reserve `amount_minor` on the payer's wallet (or record why not), once per key."""
    with one_map():
        alias = alias_for_id(request.payer_id)
        for attempt in range(_CREATE_ATTEMPTS):
            existing = (
                Hold.objects.using(alias)
                .filter(client_id=request.client_id, payer_id=request.payer_id, idempotency_key=request.idempotency_key)
                .first()
            )
            if existing is not None:
                return _replay(existing, request)
            try:
                with transaction.atomic(using=alias):
                    return _create(alias, request)
            except IntegrityError:
                # A concurrent request with this key committed first: answer as its repeat.
                if attempt == _CREATE_ATTEMPTS - 1:
                    raise
    raise AssertionError("unreachable")


def _create(alias: str, request: HoldRequest) -> HoldCreated:
    now = timezone.now()
    wallets = lock_wallets(alias, {request.payer_id}, payee_ids=set(), payers_owned_by=request.client_id)
    payer = wallets.get(request.payer_id)
    if payer is None or payer.owner_id != request.client_id:
        raise WalletNotFound(param="from")
    if payer.currency != request.currency:
        raise CurrencyMismatch(f"The paying wallet holds {payer.currency}, not {request.currency}.", param="currency")
    hold = Hold(
        id=new_id(bucket_of(request.payer_id)), client_id=request.client_id, payer_id=request.payer_id,
        payee_id=request.payee_id, amount_minor=request.amount_minor, currency=request.currency,
        status=HoldStatus.HELD, idempotency_key=request.idempotency_key, request_fingerprint=request.fingerprint,
        expires_at=request.expires_at, created_at=now, updated_at=now,
    )  # fmt: skip
    refusal = payer_refusal(payer, hold.amount_minor, hold.currency)
    plan = GroupPlan()
    if refusal is not None:
        hold.status, hold.failure_reason = HoldStatus.FAILED, refusal
    else:
        plan.entries.append(money_entry(hold.payer_id, payer, -hold.amount_minor, str(hold.id), "hold", now))
    hold.response_status, hold.response_body = render_hold(hold, created=True)
    with fast_cursor(alias) as cursor:
        write_money(cursor, plan, wallets, now)
    hold.save(using=alias, force_insert=True)
    return HoldCreated(hold, hold.response_status, hold.response_body, replayed=False)


def _locked_hold(alias: str, hold_id: uuid.UUID, client_id: int | None) -> Hold:
    hold = Hold.objects.using(alias).select_for_update().filter(id=hold_id).first()
    if hold is None or (client_id is not None and hold.client_id != client_id):
        raise HoldNotFound()
    if hold.status != HoldStatus.HELD:
        raise HoldNotHeld(hold)
    return hold


def _release(hold: Hold, wallets: dict, plan: GroupPlan, now: datetime) -> None:
    payer = wallets[hold.payer_id]
    plan.entries.append(money_entry(hold.payer_id, payer, hold.amount_minor, str(hold.id), "release", now))


def hold_void(hold_id: uuid.UUID, *, client_id: int | None, note: str = "", expired: bool = False) -> Hold:
    """Give the held amount back (a void by the client or an operator, or the hold's expiry)."""
    with one_map():
        alias = alias_for_id(hold_id)
        with transaction.atomic(using=alias):
            hold = _locked_hold(alias, hold_id, client_id)
            now = timezone.now()
            if expired and hold.expires_at > now:
                raise HoldNotDue(str(hold.id))  # the database's clock said due, ours not yet
            wallets = lock_wallets(alias, {hold.payer_id}, payee_ids=set())
            plan = GroupPlan()
            _release(hold, wallets, plan, now)
            with fast_cursor(alias) as cursor:
                write_money(cursor, plan, wallets, now)
            hold.status = HoldStatus.EXPIRED if expired else HoldStatus.VOIDED
            hold.resolution_note, hold.resolved_at, hold.updated_at = note[:500], now, now
            hold.save(using=alias, update_fields=["status", "resolution_note", "resolved_at", "updated_at"])
    return hold


def hold_capture(hold_id: uuid.UUID, *, client_id: int, amount_minor: int | None = None) -> Hold:
    """Capture all or part of a hold: the rest is released; the captured part is paid to the
    payee by a new transfer, debited in this transaction (same-shard: credited too)."""
    with one_map():
        alias = alias_for_id(hold_id)
        with transaction.atomic(using=alias):
            hold = _locked_hold(alias, hold_id, client_id)
            now = timezone.now()
            amount = hold.amount_minor if amount_minor is None else amount_minor
            if amount > hold.amount_minor:
                raise CaptureExceedsHold(f"{amount} is more than the {hold.amount_minor} held.", param="amount_minor")
            if hold.expires_at <= now:
                raise HoldExpired()
            touched, payees = wallets_to_lock(alias, [(hold.payer_id, hold.payee_id)])
            wallets = lock_wallets(alias, touched, payee_ids=payees)
            if wallets[hold.payer_id].status != WalletStatus.ACTIVE:
                raise WalletFrozen(param="from")  # a frozen wallet pays nothing: the hold stays held
            plan = GroupPlan()
            _release(hold, wallets, plan, now)
            transfer = new_transfer(
                TransferRequest(hold.client_id, hold.payer_id, hold.payee_id, amount, hold.currency, f"hold:{hold.id}"),
                now=now,
            )
            plan_first_step(transfer, wallets, plan, now)
            write_plan(alias, plan, wallets, [], now)
            hold.status, hold.captured_minor, hold.transfer_id = HoldStatus.CAPTURED, amount, transfer.id
            hold.resolved_at = hold.updated_at = now
            hold.save(
                using=alias, update_fields=["status", "captured_minor", "transfer_id", "resolved_at", "updated_at"]
            )
        if transfer.status == TransferStatus.DEBITED:
            request_drain(alias)
    return hold


def holds_expire_due(alias: str, *, limit: int = 500) -> int:
    """Expire this shard's holds past their time (served buckets only, through the index of open holds)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT id FROM holds_hold WHERE status = 'held' AND expires_at <= now() AND sharding_serves(id)"
            " ORDER BY expires_at LIMIT %s",
            [limit],
        )
        due = [row[0] for row in cursor.fetchall()]
    expired = 0
    for hold_id in due:
        try:
            hold_void(hold_id, client_id=None, note="expired", expired=True)
            expired += 1
        except (HoldNotHeld, HoldNotFound, HoldNotDue):
            pass  # resolved meanwhile (captured or voided first: the first resolution won), or not yet due
    return expired
