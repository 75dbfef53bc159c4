"""A transfer's first step on its payer's shard: the one set of rules, for single requests and batches.

A single request is a group of one. All wallets a group touches on this shard (payers, and
payees of same-shard transfers) are locked first, in ascending id order, with one
SELECT ... FOR UPDATE. While they are locked their balances cannot change under us, so each
item's debit (and same-shard credit) is decided in order in memory by `first_step_outcome`,
and the outcome is written with a handful of set-based statements sent in one pipeline:
ledger entries, wallet balances, transfers, their events and the idempotency records.
The CHECK (balance >= 0) constraints and unique indexes still guard every row.

The payer's refusal is decided before anything about the payee: a client must not learn a
foreign wallet's state (frozen, currency, how close its balance is to the limit) from a
payment its own wallet could not make anyway.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from apps.common.db import fast_cursor
from apps.ledger.acceptance import accepts_credit
from apps.ledger.models import WalletStatus
from apps.ledger.services import IN_FLIGHT_OUT_BY_PAYER_SQL, MAX_BALANCE_MINOR
from apps.sharding.fence import check_missing_are_served
from apps.sharding.ids import bucket_of, new_id
from apps.sharding.routing import alias_for_id
from apps.transfers.models import FailureReason, Transfer, TransferStatus
from apps.transfers.saga import Event, count_events_on_commit, transition


@dataclass
class LockedWallet:
    owner_id: int
    currency: str
    status: str
    balance: int
    seq: int
    accepts_from: str
    # Paid out by transfers still in flight: it may come back as a refund, so a credit keeps room for it.
    in_flight_out: int = 0
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


_LOCK_WALLETS_SQL = """
SELECT id, owner_id, currency, status, balance_minor, last_entry_seq, accepts_from FROM ledger_wallet
 WHERE id = ANY(%(ids)s) AND (%(owner)s::bigint IS NULL OR owner_id = %(owner)s OR id = ANY(%(payees)s))
 ORDER BY id FOR UPDATE
"""


def lock_wallets(
    alias: str, wallet_ids: set[uuid.UUID], *, payee_ids: set[uuid.UUID], payers_owned_by: int | None = None
) -> dict[uuid.UUID, LockedWallet]:
    """Lock the rows in id order; for `payee_ids`, also read what they have in flight.

    With `payers_owned_by`, a wallet that is not a payee is locked only if that client owns it:
    PostgreSQL filters on the row it sees before it locks, so naming another client's wallet
    as `from` neither takes nor waits for its lock (the owner's own payments are not slowed),
    and the wallet is then absent, as one that does not exist.

    The in-flight sum is read by a second statement, after the locks are held: in READ
    COMMITTED it then sees every debit committed before we got the lock (a debit needs the
    wallet's lock), so balance + in flight is exact for as long as we hold it.
    """
    with fast_cursor(alias) as cursor:
        cursor.execute(
            _LOCK_WALLETS_SQL, {"ids": sorted(wallet_ids), "owner": payers_owned_by, "payees": sorted(payee_ids)}
        )
        wallets = {row[0]: LockedWallet(*row[1:]) for row in cursor.fetchall()}
        # Through a stale map a moved wallet is "missing" here: that must not become a refusal.
        check_missing_are_served(cursor, sorted(wallet_ids - wallets.keys()))
        payees = sorted(payee_ids & wallets.keys())
        if payees:
            cursor.execute(IN_FLIGHT_OUT_BY_PAYER_SQL, [payees])
            for wallet_id, in_flight in cursor.fetchall():
                wallets[wallet_id].in_flight_out = int(in_flight)
    return wallets


def payer_refusal(payer: LockedWallet | None, amount_minor: int, currency: str) -> FailureReason | None:
    """Why a locked wallet cannot pay `amount_minor` of `currency` (a transfer's debit, a hold), if it cannot."""
    if payer is None:
        return FailureReason.PAYER_NOT_FOUND
    if payer.currency != currency:
        return FailureReason.PAYER_CURRENCY_MISMATCH
    if payer.status != WalletStatus.ACTIVE:
        return FailureReason.PAYER_FROZEN
    if payer.balance < amount_minor:
        return FailureReason.INSUFFICIENT_FUNDS
    return None


def payee_refusal(transfer: Transfer, payee: LockedWallet | None) -> FailureReason | None:
    """Why a locked payee does not take `transfer`, if it does not. A wallet that does not take
    the client's transfers is "not found" before anything else about it is looked at."""
    refund = transfer.refund_of is not None
    if payee is None or not accepts_credit(
        payee.accepts_from, payee.owner_id, client_id=transfer.client_id, refund=refund
    ):
        return FailureReason.PAYEE_NOT_FOUND
    if payee.currency != transfer.currency:
        return FailureReason.PAYEE_CURRENCY_MISMATCH
    if payee.status != WalletStatus.ACTIVE:
        return FailureReason.PAYEE_FROZEN
    if payee.balance + payee.in_flight_out + transfer.amount_minor > MAX_BALANCE_MINOR:
        return FailureReason.PAYEE_BALANCE_LIMIT
    return None


def _entry(wallet_id: uuid.UUID, wallet: LockedWallet, delta: int, transfer: Transfer, kind: str, now: datetime):
    return money_entry(wallet_id, wallet, delta, str(transfer.id), kind, now)


def money_entry(
    wallet_id: uuid.UUID, wallet: LockedWallet, delta: int, reference: str, kind: str, now: datetime
) -> tuple:
    """Move a locked wallet's balance by `delta` in memory; the ledger entry row that records it."""
    wallet.balance += delta
    wallet.seq += 1
    wallet.changed = True
    return (new_id(bucket_of(wallet_id)), wallet_id, wallet.seq, reference, kind, delta, wallet.balance, now)


def plan_first_step(
    transfer: Transfer, wallets: dict[uuid.UUID, LockedWallet], plan: GroupPlan, now: datetime, *, stored: bool = False
) -> None:
    """Decide one `pending` transfer's first step against the locked wallets, in memory.

    The payer first (found, currency, active, funds); then, when the payee is on the same
    shard, the payee (found, currency, active, room under the limit): both pass -> debit and
    credit, completed; payer refuses -> failed, nothing moved; payee refuses -> failed, nothing
    moved. Cross-shard: debited; the saga credits the payee later. The planned events start
    with the transfer's creation unless it is already `stored`.
    """
    events = [] if stored else [Event(None, TransferStatus.PENDING, None, now)]

    def move(to: TransferStatus, reason: str | None = None) -> None:
        events.append(Event(transfer.status, to, reason, now))
        transfer.status, transfer.updated_at = to, now
        if reason:
            transfer.failure_reason = reason

    payer = wallets.get(transfer.payer_id)
    same_shard = alias_for_id(transfer.payee_id) == alias_for_id(transfer.payer_id)
    payee = wallets.get(transfer.payee_id)
    refusal = payer_refusal(payer, transfer.amount_minor, transfer.currency)
    if refusal is None and same_shard:
        refusal = payee_refusal(transfer, payee)
    if refusal is not None:
        move(TransferStatus.FAILED, refusal)
    else:
        assert payer is not None  # noqa: S101 - payer_refusal said so
        plan.entries.append(_entry(transfer.payer_id, payer, -transfer.amount_minor, transfer, "debit", now))
        move(TransferStatus.DEBITED)
        if same_shard:
            assert payee is not None  # noqa: S101 - payee_refusal said so
            plan.entries.append(_entry(transfer.payee_id, payee, transfer.amount_minor, transfer, "credit", now))
            move(TransferStatus.COMPLETED)
    plan.planned.append(Planned(transfer, events))


def wallets_to_lock(alias: str, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    """For (payer, payee) pairs paid from `alias`: (every wallet their first steps touch, the same-shard payees)."""
    payees = {payee for _, payee in pairs if alias_for_id(payee) == alias}
    return {payer for payer, _ in pairs} | payees, payees


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
    request_fingerprint, attempts, last_error, parked_at, created_at, updated_at, refund_of, description, metadata)
SELECT id, client_id, payer_id, payee_id, amount, currency, status, reason, fingerprint, 0, '', NULL, created, updated,
       refund_of, description, metadata::jsonb
  FROM unnest(%s::uuid[], %s::bigint[], %s::uuid[], %s::uuid[], %s::bigint[], %s::text[], %s::text[], %s::text[],
              %s::text[], %s::timestamptz[], %s::timestamptz[], %s::uuid[], %s::text[], %s::text[])
       AS t(id, client_id, payer_id, payee_id, amount, currency, status, reason, fingerprint, created, updated,
            refund_of, description, metadata)
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
RETURNING payer_id, key, id
"""


def _columns(rows: list[tuple]) -> list[list]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else []


def write_money(cursor, plan: GroupPlan, wallets: dict[uuid.UUID, LockedWallet], now: datetime) -> None:
    if plan.entries:
        cursor.execute(_INSERT_ENTRIES, _columns(plan.entries))
    changed = [(wid, w.balance, w.seq) for wid, w in wallets.items() if w.changed]
    if changed:
        ids, balances, seqs = _columns(changed)
        cursor.execute(_UPDATE_WALLETS, [now, ids, balances, seqs])


def write_plan(
    alias: str,
    plan: GroupPlan,
    wallets: dict[uuid.UUID, LockedWallet],
    records: list[tuple],
    now: datetime,
) -> dict[tuple[uuid.UUID, str], int]:
    """Write the group's new transfers: five statements in one pipeline, inside the caller's transaction.

    Returns the idempotency records' ids by (payer, key).
    """
    transfers = [
        (t.id, t.client_id, t.payer_id, t.payee_id, t.amount_minor, t.currency, t.status, t.failure_reason,
         t.request_fingerprint, t.created_at, t.updated_at, t.refund_of, t.description,
         None if t.metadata is None else json.dumps(t.metadata))
        for t in (p.transfer for p in plan.planned)
    ]  # fmt: skip
    events = [(p.transfer.id, e.from_status, e.to_status, e.reason, e.at) for p in plan.planned for e in p.events]
    # One pipeline: the five statements go out together, one round trip.
    with fast_cursor(alias) as cursor, cursor.connection.pipeline():
        write_money(cursor, plan, wallets, now)
        cursor.execute(_INSERT_TRANSFERS, _columns(transfers))
        cursor.execute(_INSERT_EVENTS, _columns(events))
        record_ids: dict[tuple[uuid.UUID, str], int] = {}
        if records:  # a hold's capture keeps its own record: the hold itself
            cursor.execute(_INSERT_RECORDS, _columns(records))
            record_ids = {(payer_id, key): record_id for payer_id, key, record_id in cursor.fetchall()}
    count_events_on_commit(alias, [p.events for p in plan.planned])
    return record_ids


def run_stored_first_step(transfer: Transfer, now: datetime) -> None:
    """The first step of a transfer already stored as `pending` (locked by the caller), by the same rules."""
    alias = transfer._state.db or alias_for_id(transfer.id)  # the caller's transaction's shard
    touched, payees = wallets_to_lock(alias, [(transfer.payer_id, transfer.payee_id)])
    wallets = lock_wallets(alias, touched, payee_ids=payees)
    stored_status = transfer.status
    plan = GroupPlan()
    plan_first_step(transfer, wallets, plan, now, stored=True)
    with fast_cursor(alias) as cursor:
        write_money(cursor, plan, wallets, now)
    transfer.status = stored_status
    for event in plan.planned[0].events:
        transition(transfer, TransferStatus(event.to_status), reason=event.reason, now=event.at)
