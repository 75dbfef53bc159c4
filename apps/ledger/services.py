"""Every write to the ledger. Each service is one transaction on the wallet's shard.

Balance changes are guarded in SQL (a conditional UPDATE) and recorded with a
unique (wallet, reference, kind) entry in the same transaction, so a repeat with
the same reference returns the first result and changes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from apps.common.db import fast_cursor
from apps.common.errors import IdempotencyKeyReused, ParameterInvalid, error_body
from apps.common.metadata import MAX_KEYS
from apps.ledger.acceptance import accepts_credit
from apps.ledger.errors import (
    BalanceLimitExceeded,
    CurrencyMismatch,
    InsufficientFunds,
    WalletFrozen,
    WalletNotFound,
)
from apps.ledger.models import AcceptsFrom, EntryKind, MovementKey, Wallet, WalletStatus
from apps.sharding.fence import check_missing_are_served
from apps.sharding.ids import bucket_of, new_id
from apps.sharding.routing import alias_for_id, random_bucket, shard_map

MAX_BALANCE_MINOR = 2**63 - 1  # BIGINT

# What a wallet has paid into transfers still in flight (debited, not yet completed or
# refunded). It may come back as a refund, so every inflow keeps room for it under the
# limit: balance + in flight + amount <= 2^63-1, and a refund always fits. The transfers
# live on their payer's shard, beside the wallet (an indexed sum over in-flight rows only).
IN_FLIGHT_OUT_SQL = """(SELECT COALESCE(sum(t.amount_minor), 0) FROM transfers_transfer t
                          WHERE t.payer_id = {wallet} AND t.status IN ('debited', 'refunding'))"""
IN_FLIGHT_OUT_BY_PAYER_SQL = """
SELECT payer_id, sum(amount_minor) FROM transfers_transfer
 WHERE payer_id = ANY(%s) AND status IN ('debited', 'refunding') GROUP BY payer_id
"""
# Inflows that add new money to a wallet: they keep room for its money in flight. A refund
# only gives back what was in flight, so it needs none.
_KEEPS_ROOM = {"deposit", "credit"}


@dataclass(frozen=True)
class AppliedEntry:
    """The effect of one money movement on one wallet, as first applied."""

    id: uuid.UUID
    wallet_id: uuid.UUID
    seq: int
    reference: str
    kind: str
    amount_minor: int
    balance_after_minor: int
    created_at: datetime
    replayed: bool = False


_ENTRY_COLUMNS = "id, wallet_id, seq, reference, kind, amount_minor, balance_after_minor, created_at"

# One round trip: move the balance if the guard holds, then record the entry.
# The UNIQUE(wallet, reference, kind) index is what makes a concurrent repeat fail.
_APPLY_SQL = f"""
WITH moved AS (
    UPDATE ledger_wallet
       SET balance_minor = balance_minor + %(delta)s,
           last_entry_seq = last_entry_seq + 1,
           updated_at = %(now)s
     WHERE id = %(wallet_id)s
       -- in numeric, so that a balance near the BIGINT limit is refused, not an overflow error
       AND balance_minor::numeric + %(delta)s >= 0
       AND balance_minor::numeric + %(delta)s
           + CASE WHEN %(keep_room)s THEN {IN_FLIGHT_OUT_SQL.format(wallet="%(wallet_id)s")} ELSE 0 END
           <= 9223372036854775807
       AND (%(allow_frozen)s OR status = 'active')
       AND (%(currency)s::text IS NULL OR currency = %(currency)s::text)
       AND NOT EXISTS (
           SELECT 1 FROM ledger_entry
            WHERE wallet_id = %(wallet_id)s AND reference = %(reference)s AND kind = %(kind)s)
 RETURNING id, balance_minor, last_entry_seq
)
INSERT INTO ledger_entry ({_ENTRY_COLUMNS})
SELECT %(entry_id)s, id, last_entry_seq, %(reference)s, %(kind)s, %(delta)s, balance_minor, %(now)s FROM moved
RETURNING {_ENTRY_COLUMNS}
"""  # noqa: S608 - a constant column list; every value is bound

_EXISTING_SQL = f"SELECT {_ENTRY_COLUMNS} FROM ledger_entry WHERE wallet_id = %s AND reference = %s AND kind = %s"  # noqa: S608


def _entry(row: tuple[uuid.UUID, uuid.UUID, int, str, str, int, int, datetime], *, replayed: bool) -> AppliedEntry:
    return AppliedEntry(*row, replayed=replayed)


def _existing_entry(alias: str, wallet_id: uuid.UUID, reference: str, kind: str) -> AppliedEntry | None:
    with connections[alias].cursor() as cursor:
        cursor.execute(_EXISTING_SQL, [wallet_id, reference, kind])
        row = cursor.fetchone()
    return _entry(row, replayed=True) if row else None


def _replay(existing: AppliedEntry, delta: int) -> AppliedEntry:
    if existing.amount_minor != delta:
        raise IdempotencyKeyReused(
            f"Reference {existing.reference!r} was already used for a {existing.kind} of "
            f"{abs(existing.amount_minor)}, not {abs(delta)}.",
            param="Idempotency-Key",
        )
    return existing


def in_flight_out_minor(alias: str, wallet_id: uuid.UUID) -> int:
    """What the wallet has paid into transfers still in flight."""
    with connections[alias].cursor() as cursor:
        cursor.execute(IN_FLIGHT_OUT_BY_PAYER_SQL, [[wallet_id]])
        row = cursor.fetchone()
    return int(row[1]) if row else 0


def _lock_wallet(alias: str, wallet_id: uuid.UUID) -> None:
    """Lock the row before reading its money in flight, so that the sum is exact under the lock
    (a debit needs this lock too; a statement that waited for it would read an older sum)."""
    with fast_cursor(alias) as cursor:
        cursor.execute("SELECT 1 FROM ledger_wallet WHERE id = %s FOR UPDATE", [wallet_id])


def _why_not_applied(alias: str, wallet_id: uuid.UUID, delta: int, currency: str | None, kind: str) -> Exception:
    wallet = Wallet.objects.using(alias).filter(id=wallet_id).first()
    if wallet is None:
        with connections[alias].cursor() as cursor:  # a stale map's "missing" is no answer
            check_missing_are_served(cursor, [wallet_id])
        return WalletNotFound(param="wallet_id")
    if currency is not None and wallet.currency != currency:
        return CurrencyMismatch(f"The wallet holds {wallet.currency}, not {currency}.", param="currency")
    if wallet.status != WalletStatus.ACTIVE:
        return WalletFrozen()
    in_flight = in_flight_out_minor(alias, wallet_id) if kind in _KEEPS_ROOM else 0
    if wallet.balance_minor + in_flight + delta > MAX_BALANCE_MINOR:
        return BalanceLimitExceeded(param="amount_minor")
    return InsufficientFunds(
        f"The wallet holds {wallet.balance_minor}, which is less than {-delta}.", param="amount_minor"
    )


def apply_entry(
    *,
    wallet_id: uuid.UUID,
    reference: str,
    kind: EntryKind,
    delta: int,
    currency: str | None = None,
    allow_frozen: bool = False,
    now: datetime | None = None,
    alias: str | None = None,
) -> AppliedEntry:
    """Apply one signed movement to a wallet exactly once per (reference, kind).

    `alias`: the shard of the caller's open transaction (never looked up again in the middle
    of one: a map refreshed in between would send this write elsewhere).

    Raises WalletNotFound, CurrencyMismatch, WalletFrozen or InsufficientFunds when
    the guard refuses (nothing changed), IdempotencyKeyReused when the reference
    was already applied with another amount.

    Outside a transaction a debit or refund is one statement that commits on its own (one
    round trip); a deposit or credit locks the row first (two statements, one transaction).
    Inside the caller's transaction it takes part in it, without a savepoint: there a
    duplicate (IntegrityError) is the caller's to handle, since the transaction is lost.
    """
    alias = alias or alias_for_id(wallet_id)
    keep_room = str(kind) in _KEEPS_ROOM
    params = {
        "delta": delta,
        "now": now or timezone.now(),
        "wallet_id": wallet_id,
        "allow_frozen": allow_frozen,
        "currency": currency,
        "reference": reference,
        "kind": str(kind),
        "entry_id": new_id(bucket_of(wallet_id)),
        "keep_room": keep_room,
    }
    nested = connections[alias].in_atomic_block
    try:
        with transaction.atomic(using=alias) if keep_room and not nested else nullcontext():
            if keep_room:
                _lock_wallet(alias, wallet_id)
            with fast_cursor(alias) as cursor:
                cursor.execute(_APPLY_SQL, params)
                row = cursor.fetchone()
    except IntegrityError:
        if nested:
            raise
        row = None  # a concurrent repeat committed the same (wallet, reference, kind) first
    if row is not None:
        return _entry(row, replayed=False)
    existing = _existing_entry(alias, wallet_id, reference, str(kind))
    if existing is not None:
        return _replay(existing, delta)
    raise _why_not_applied(alias, wallet_id, delta, currency, str(kind))


def wallet_create(
    *,
    owner_id: int,
    currency: str,
    bucket: int | None = None,
    payer_may_refund: bool = False,
    accepts_from: AcceptsFrom = AcceptsFrom.ANY,
    description: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Wallet:
    """Create an empty wallet in a random bucket (or the one given), on that bucket's shard."""
    bucket = random_bucket() if bucket is None else bucket
    alias = shard_map().alias_for_bucket(bucket)
    now = timezone.now()
    wallet = Wallet(
        id=new_id(bucket), owner_id=owner_id, currency=currency, payer_may_refund=payer_may_refund,
        accepts_from=accepts_from, created_at=now, updated_at=now, description=description, metadata=metadata or None,
    )  # fmt: skip
    with transaction.atomic(using=alias):
        wallet.save(using=alias, force_insert=True)
    return wallet


@dataclass(frozen=True)
class WalletChanges:
    """What a PATCH asks for: None leaves a setting as it is."""

    payer_may_refund: bool | None = None
    accepts_from: AcceptsFrom | None = None
    description: str | None = None
    set_description: bool = False  # a null description clears it: "given" is said apart from the value
    metadata: dict[str, str] | None = None  # merged: a key given as "" is removed


def _owner_settings(wallet: Wallet) -> tuple[object, ...]:
    return (wallet.payer_may_refund, wallet.accepts_from, wallet.description, wallet.metadata)


def wallet_update(*, wallet_id: uuid.UUID, owner_id: int, changes: WalletChanges) -> Wallet:
    """The owner's settings: refunds by payers (see apps.refunds.services), whose transfers it
    takes (apps.ledger.acceptance), description and metadata; WalletNotFound if not its wallet.
    Written only when something changed."""
    alias = alias_for_id(wallet_id)
    with transaction.atomic(using=alias):
        wallet = Wallet.objects.using(alias).select_for_update().filter(id=wallet_id, owner_id=owner_id).first()
        if wallet is None:
            raise WalletNotFound(param="wallet_id")
        before = _owner_settings(wallet)
        if changes.payer_may_refund is not None:
            wallet.payer_may_refund = changes.payer_may_refund
        if changes.accepts_from is not None:
            wallet.accepts_from = changes.accepts_from
        if changes.set_description:
            wallet.description = changes.description
        if changes.metadata is not None:
            merged = {**(wallet.metadata or {}), **changes.metadata}
            wallet.metadata = {k: v for k, v in merged.items() if v != ""} or None
            if len(wallet.metadata or {}) > MAX_KEYS:
                raise ParameterInvalid(f"The merged metadata would have more than {MAX_KEYS} keys.", param="metadata")
        if _owner_settings(wallet) != before:
            wallet.updated_at = timezone.now()
            wallet.save(
                using=alias,
                update_fields=["payer_may_refund", "accepts_from", "description", "metadata", "updated_at"],
            )
    return wallet


def wallet_fund(*, wallet_id: uuid.UUID, amount_minor: int, reference: str) -> AppliedEntry:
    """Money enters the system: a deposit, applied once per reference (the idempotency key)."""
    return apply_entry(wallet_id=wallet_id, reference=reference, kind=EntryKind.DEPOSIT, delta=amount_minor)


def wallet_withdraw(*, wallet_id: uuid.UUID, amount_minor: int, reference: str) -> AppliedEntry:
    """Money leaves the system: a withdrawal, applied once per reference, never below zero."""
    return apply_entry(wallet_id=wallet_id, reference=reference, kind=EntryKind.WITHDRAWAL, delta=-amount_minor)


@dataclass(frozen=True)
class MovementAnswer:
    """The answer for a deposit's or withdrawal's key: as first given, exactly."""

    status: int
    body: str
    replayed: bool


# Refusals that are the key's answer, as a success would be (validation errors are not).
_MOVEMENT_REFUSALS = (InsufficientFunds, WalletFrozen, BalanceLimitExceeded)

_CLAIM_KEY_SQL = """
INSERT INTO ledger_movement_key (wallet_id, key, kind, amount_minor, created_at) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (wallet_id, key) DO NOTHING RETURNING id
"""


def wallet_movement(
    *, wallet_id: uuid.UUID, kind: EntryKind, amount_minor: int, key: str, render: Callable[[AppliedEntry], str]
) -> MovementAnswer:
    """A deposit or withdrawal under an Idempotency-Key, Stripe-like: the key's first answer is its answer.

    One transaction on the wallet's shard claims the key, applies the movement (or records
    why not: insufficient funds, frozen, balance limit) and stores the answer. A concurrent
    repeat waits on the key's unique index, then replays. The same key with another amount,
    or for the other kind of movement, is IdempotencyKeyReused.
    """
    alias = alias_for_id(wallet_id)
    delta = amount_minor if kind == EntryKind.DEPOSIT else -amount_minor
    with transaction.atomic(using=alias):
        with fast_cursor(alias) as cursor:
            cursor.execute(_CLAIM_KEY_SQL, [wallet_id, key, str(kind), amount_minor, timezone.now()])
            claimed = cursor.fetchone()
        if claimed is None:
            first = MovementKey.objects.using(alias).get(wallet_id=wallet_id, key=key)
            if (first.kind, first.amount_minor) != (str(kind), amount_minor):
                raise IdempotencyKeyReused(
                    f"This key was used for a {first.kind} of {first.amount_minor}.", param="Idempotency-Key"
                )
            return MovementAnswer(cast(int, first.response_status), cast(str, first.response_body), replayed=True)
        try:
            entry = apply_entry(wallet_id=wallet_id, reference=key, kind=kind, delta=delta, alias=alias)
            status, body = 201, render(entry)
        except _MOVEMENT_REFUSALS as exc:
            status, body = exc.status, json.dumps(error_body(exc.code, exc.message, exc.param), separators=(",", ":"))
        MovementKey.objects.using(alias).filter(id=claimed[0]).update(response_status=status, response_body=body)
    return MovementAnswer(status, body, replayed=False)


def wallet_debit(
    *, wallet_id: uuid.UUID, transfer_id: uuid.UUID, amount_minor: int, currency: str, now: datetime | None = None
) -> AppliedEntry:
    """Saga step: take a transfer's amount from its payer (active, same currency, enough funds)."""
    return apply_entry(
        wallet_id=wallet_id,
        reference=str(transfer_id),
        kind=EntryKind.DEBIT,
        delta=-amount_minor,
        currency=currency,
        now=now,
    )


def wallet_credit(
    *,
    wallet_id: uuid.UUID,
    transfer_id: uuid.UUID,
    amount_minor: int,
    currency: str,
    client_id: int,
    refund: bool,
    now: datetime | None = None,
    alias: str | None = None,
) -> AppliedEntry:
    """Saga step: give a transfer's amount to its payee (takes `client_id`'s transfers, active,
    same currency). A wallet that does not take them is WalletNotFound, whatever else is true."""
    alias = alias or alias_for_id(wallet_id)
    with fast_cursor(alias) as cursor:
        cursor.execute("SELECT accepts_from, owner_id FROM ledger_wallet WHERE id = %s", [wallet_id])
        settings_row = cursor.fetchone()
    if settings_row is not None and not accepts_credit(*settings_row, client_id=client_id, refund=refund):
        raise WalletNotFound(param="to")
    return apply_entry(
        wallet_id=wallet_id,
        reference=str(transfer_id),
        kind=EntryKind.CREDIT,
        delta=amount_minor,
        currency=currency,
        now=now,
        alias=alias,
    )


def wallet_refund(
    *, wallet_id: uuid.UUID, transfer_id: uuid.UUID, amount_minor: int, alias: str | None = None
) -> AppliedEntry:
    """Saga compensation: give a failed transfer's debit back to its payer, even if since frozen."""
    return apply_entry(
        wallet_id=wallet_id,
        reference=str(transfer_id),
        kind=EntryKind.REFUND,
        delta=amount_minor,
        allow_frozen=True,
        alias=alias,
    )


def wallet_set_status(*, wallet_id: uuid.UUID, status: WalletStatus) -> Wallet:
    """Freeze or unfreeze a wallet (one guarded update on its shard)."""
    alias = alias_for_id(wallet_id)
    with transaction.atomic(using=alias):
        updated = Wallet.objects.using(alias).filter(id=wallet_id).update(status=status, updated_at=timezone.now())
        if not updated:
            raise WalletNotFound(param="wallet_id")
    return Wallet.objects.using(alias).get(id=wallet_id)
