"""The first step of many transfers of one payer shard, set-based, in one transaction.

All wallets the group touches on this shard (payers, and payees of same-shard transfers)
are locked first, in ascending id order, with one SELECT ... FOR UPDATE. While they are
locked their balances cannot change under us, so each item's debit (and same-shard
credit) is decided in order in memory, exactly as the guarded UPDATE would decide it, and
the outcome is written with a handful of set-based statements sent in one pipeline:
ledger entries, wallet balances, transfers, their events and the idempotency records.
The CHECK (balance >= 0) constraints and unique indexes still guard every row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connections

from apps.ledger.models import WalletStatus
from apps.ledger.services import MAX_BALANCE_MINOR
from apps.sharding.ids import bucket_of, new_id
from apps.sharding.routing import alias_for_id
from apps.transfers.models import FailureReason, Transfer, TransferStatus
from apps.transfers.saga import Event, count_events_on_commit


@dataclass
class LockedWallet:
    owner_id: int
    currency: str
    status: str
    balance: int
    seq: int
    changed: bool = False


@dataclass
class Planned:
    """One item's first step, decided under lock."""

    transfer: Transfer
    events: list[Event]


@dataclass
class GroupPlan:
    planned: list[Planned] = field(default_factory=list)
    entries: list[tuple] = field(default_factory=list)


def lock_wallets(alias: str, wallet_ids: set[uuid.UUID]) -> dict[uuid.UUID, LockedWallet]:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT id, owner_id, currency, status, balance_minor, last_entry_seq FROM ledger_wallet"
            " WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            [sorted(wallet_ids)],
        )
        return {row[0]: LockedWallet(*row[1:]) for row in cursor.fetchall()}


def _entry(wallet_id: uuid.UUID, wallet: LockedWallet, delta: int, transfer: Transfer, kind: str, now: datetime):
    wallet.balance += delta
    wallet.seq += 1
    wallet.changed = True
    return (new_id(bucket_of(wallet_id)), wallet_id, wallet.seq, str(transfer.id), kind, delta, wallet.balance, now)


def plan_item(transfer: Transfer, wallets: dict[uuid.UUID, LockedWallet], plan: GroupPlan, now: datetime) -> None:
    """Decide one transfer's first step against the locked balances (same rules as saga.run_payer_step)."""
    events = [Event(None, TransferStatus.PENDING, None, now)]

    def move(to: TransferStatus, reason: str | None = None) -> None:
        events.append(Event(transfer.status, to, reason, now))
        transfer.status, transfer.updated_at = to, now
        if reason:
            transfer.failure_reason = reason

    payer = wallets[transfer.payer_id]
    same_shard = alias_for_id(transfer.payee_id) == alias_for_id(transfer.payer_id)
    payee = wallets.get(transfer.payee_id) if same_shard else None
    if same_shard and payee is None:
        move(TransferStatus.FAILED, FailureReason.PAYEE_NOT_FOUND)
    elif same_shard and payee.currency != transfer.currency:
        move(TransferStatus.FAILED, FailureReason.PAYEE_CURRENCY_MISMATCH)
    elif same_shard and payee.status != WalletStatus.ACTIVE:
        move(TransferStatus.FAILED, FailureReason.PAYEE_FROZEN)
    elif same_shard and payee.balance + transfer.amount_minor > MAX_BALANCE_MINOR:
        move(TransferStatus.FAILED, FailureReason.PAYEE_BALANCE_LIMIT)
    elif payer.status != WalletStatus.ACTIVE:
        move(TransferStatus.FAILED, FailureReason.PAYER_FROZEN)
    elif payer.balance < transfer.amount_minor:
        move(TransferStatus.FAILED, FailureReason.INSUFFICIENT_FUNDS)
    else:
        plan.entries.append(_entry(transfer.payer_id, payer, -transfer.amount_minor, transfer, "debit", now))
        move(TransferStatus.DEBITED)
        if same_shard:
            plan.entries.append(_entry(transfer.payee_id, payee, transfer.amount_minor, transfer, "credit", now))
            move(TransferStatus.COMPLETED)
    plan.planned.append(Planned(transfer, events))


_INSERT_ENTRIES = """
INSERT INTO ledger_entry (id, wallet_id, seq, reference, kind, amount_minor, balance_after_minor, created_at)
SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::bigint[],
                     %s::timestamptz[])
"""
_UPDATE_WALLETS = """
UPDATE ledger_wallet w SET balance_minor = v.balance, last_entry_seq = v.seq, updated_at = %s
  FROM unnest(%s::uuid[], %s::bigint[], %s::bigint[]) AS v(id, balance, seq)
 WHERE w.id = v.id
"""
_INSERT_TRANSFERS = """
INSERT INTO transfers_transfer (id, client_id, payer_id, payee_id, amount_minor, currency, status, failure_reason,
    request_fingerprint, attempts, last_error, parked_at, created_at, updated_at)
SELECT id, client_id, payer_id, payee_id, amount, currency, status, reason, fingerprint, 0, '', NULL, created, updated
  FROM unnest(%s::uuid[], %s::bigint[], %s::uuid[], %s::uuid[], %s::bigint[], %s::text[], %s::text[], %s::text[],
              %s::text[], %s::timestamptz[], %s::timestamptz[])
       AS t(id, client_id, payer_id, payee_id, amount, currency, status, reason, fingerprint, created, updated)
"""
_INSERT_EVENTS = """
INSERT INTO transfers_event (transfer_id, from_status, to_status, reason, created_at)
SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])
"""
_INSERT_RECORDS = """
INSERT INTO transfers_idempotency (client_id, payer_id, key, fingerprint, transfer_id, response_status,
    response_body, created_at)
SELECT * FROM unnest(%s::bigint[], %s::uuid[], %s::text[], %s::text[], %s::uuid[], %s::smallint[], %s::text[],
                     %s::timestamptz[])
"""


def _columns(rows: list[tuple]) -> list[list]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else []


def write_plan(
    alias: str,
    plan: GroupPlan,
    wallets: dict[uuid.UUID, LockedWallet],
    records: list[tuple],
    now: datetime,
) -> None:
    """Write the group's outcome: five statements in one pipeline, inside the caller's transaction."""
    changed = [(wid, w.balance, w.seq) for wid, w in wallets.items() if w.changed]
    transfers = [
        (t.id, t.client_id, t.payer_id, t.payee_id, t.amount_minor, t.currency, t.status, t.failure_reason,
         t.request_fingerprint, t.created_at, t.updated_at)
        for t in (p.transfer for p in plan.planned)
    ]  # fmt: skip
    events = [(p.transfer.id, e.from_status, e.to_status, e.reason, e.at) for p in plan.planned for e in p.events]
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    # wrap_database_errors: psycopg's errors become Django's (IntegrityError...), as for ORM queries.
    with connection.wrap_database_errors, raw.pipeline(), raw.cursor() as cursor:
        if plan.entries:
            cursor.execute(_INSERT_ENTRIES, _columns(plan.entries))
        if changed:
            ids, balances, seqs = _columns(changed)
            cursor.execute(_UPDATE_WALLETS, [now, ids, balances, seqs])
        cursor.execute(_INSERT_TRANSFERS, _columns(transfers))
        cursor.execute(_INSERT_EVENTS, _columns(events))
        cursor.execute(_INSERT_RECORDS, _columns(records))
    count_events_on_commit(alias, [p.events for p in plan.planned])
