"""Creating transfers: one path for `POST /v1/transfers` (a group of one) and the batch endpoint.

Requests are grouped by the payer's shard; each group is one transaction on that shard
that locks the wallets, runs every item's first step (`first_step`), and inserts the
transfers with their idempotency records. A repeated key is answered by the rules of
`idempotency`. A group that loses a race (a concurrent request with one of its keys, a lock
timeout, a deadlock) is rolled back and redone against the records then committed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from django.conf import settings
from django.db import IntegrityError, OperationalError, connections, transaction
from django.utils import timezone

from apps.common.errors import DomainError
from apps.ledger.errors import CurrencyMismatch, WalletNotFound
from apps.sharding.ids import bucket_of, new_id
from apps.sharding.routing import alias_for_id, one_map
from apps.transfers import idempotency
from apps.transfers.first_step import GroupPlan, lock_wallets, plan_first_step, wallets_to_lock, write_plan
from apps.transfers.models import IdempotencyRecord, Transfer, TransferStatus
from apps.transfers.saga import Event

log = logging.getLogger(__name__)

# Renders the response stored for replays from the transfer and its status history (None:
# read it from the database): (HTTP status, JSON text).
Render = Callable[[Transfer, "list[Event] | None"], tuple[int, str]]

_GROUP_ATTEMPTS = 3


@dataclass(frozen=True)
class TransferRequest:
    client_id: int
    payer_id: uuid.UUID
    payee_id: uuid.UUID
    amount_minor: int
    currency: str
    idempotency_key: str
    description: str | None = None
    metadata: dict[str, str] | None = None  # None: none given ({} is stored as none too)

    @property
    def fingerprint(self) -> str:
        body: dict[str, object] = {
            "from": str(self.payer_id),
            "to": str(self.payee_id),
            "amount_minor": self.amount_minor,
            "currency": self.currency,
        }
        # Only when given: a request without them has the fingerprint it always had.
        if self.description is not None:
            body["description"] = self.description
        if self.metadata:
            body["metadata"] = self.metadata
        return idempotency.fingerprint_of(body)


@dataclass
class ItemResult:
    """One request's answer. `status`/`body` are None only for an accepted request whose
    response is deferred (a waiting request stores it later with `transfer_store_response`)."""

    index: int
    outcome: str  # accepted | replayed | rejected
    status: int | None
    body: str | None = None  # the transfer exactly as the single endpoint sends it
    error: DomainError | None = None
    transfer: Transfer | None = None  # accepted: as created
    record_id: int | None = None

    @classmethod
    def rejected(cls, index: int, error: DomainError) -> ItemResult:
        return cls(index, "rejected", error.status, error=error)


def request_drain(alias: str) -> None:
    """Have the saga run for the debited transfers of `alias` (best effort): in this process
    with DRAIN_IN_API, else by a worker."""
    if settings.TRANSFER_DRAIN_IN_API:
        from apps.transfers import local_drain

        local_drain.wake(alias)
        return
    from apps.transfers.tasks import request_drain as trigger

    trigger(alias)


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
        description=request.description,
        metadata=request.metadata or None,
    )


def _existing_records(
    alias: str, client_id: int, requests: list[TransferRequest]
) -> dict[tuple[uuid.UUID, str], idempotency.StoredRecord]:
    wanted = {(r.payer_id, r.idempotency_key) for r in requests}
    rows = IdempotencyRecord.objects.using(alias).filter(
        client_id=client_id,
        payer_id__in={r.payer_id for r in requests},
        key__in={r.idempotency_key for r in requests},
    )
    fields = ("id", "fingerprint", "transfer_id", "response_status", "response_body", "created_at")
    return {
        (row["payer_id"], row["key"]): idempotency.StoredRecord(**{f: row[f] for f in fields})
        for row in rows.values("payer_id", "key", *fields)
        if (row["payer_id"], row["key"]) in wanted
    }


def transfer_store_response(alias: str, record_id: int, status: int, body: str) -> tuple[int, str]:
    """Store a key's response once; returns the one stored (an earlier one wins), so every answer is the same."""
    stored = (
        IdempotencyRecord.objects.using(alias)
        .filter(id=record_id, response_status__isnull=True)
        .update(response_status=status, response_body=body)
    )
    if stored:
        return status, body
    record = IdempotencyRecord.objects.using(alias).values("response_status", "response_body").get(id=record_id)
    return cast(int, record["response_status"]), cast(str, record["response_body"])


def _repeat(
    alias: str, index: int, request: TransferRequest, record: idempotency.StoredRecord, render: Render, key_param: str
) -> ItemResult:
    try:
        replay = idempotency.verdict(record, request.fingerprint, key_param=key_param)
    except DomainError as exc:
        return ItemResult.rejected(index, exc)
    status, body = record.response_status, record.response_body
    if replay.store_current:  # the first request died before answering: answer with the transfer as it is
        transfer = Transfer.objects.using(alias).get(id=cast(uuid.UUID, record.transfer_id))
        status, body = transfer_store_response(alias, record.id, *render(transfer, None))
    return ItemResult(index, "replayed", status, body, record_id=record.id)


def _first_steps(
    alias: str, client_id: int, fresh: list[tuple[int, TransferRequest, bool]], render: Render
) -> list[ItemResult]:
    now = timezone.now()
    touched, payees = wallets_to_lock(alias, [(r.payer_id, r.payee_id) for _, r, _ in fresh])
    wallets = lock_wallets(alias, touched, payee_ids=payees, payers_owned_by=client_id)
    plan = GroupPlan()
    results: list[ItemResult] = []
    records: list[tuple] = []
    for index, request, defer in fresh:
        payer = wallets.get(request.payer_id)
        if payer is None or payer.owner_id != client_id:
            results.append(ItemResult.rejected(index, WalletNotFound(param="from")))
            continue
        if payer.currency != request.currency:
            message = f"The paying wallet holds {payer.currency}, not {request.currency}."
            results.append(ItemResult.rejected(index, CurrencyMismatch(message, param="currency")))
            continue
        transfer = new_transfer(request, now=now)
        plan_first_step(transfer, wallets, plan, now)
        status, body = (None, None) if defer else render(transfer, plan.planned[-1].events)
        records.append((client_id, request.payer_id, request.idempotency_key, request.fingerprint, transfer.id,
                        status, body, now))  # fmt: skip
        results.append(ItemResult(index, "accepted", status, body, transfer=transfer))
    if plan.planned:
        record_ids = write_plan(alias, plan, wallets, records, now)
        for result, (_, request, _) in zip(results, fresh, strict=True):
            if result.outcome == "accepted":
                result.record_id = record_ids[(request.payer_id, request.idempotency_key)]
    return results


def _lost_connection(alias: str) -> bool:
    raw = connections[alias].connection
    return raw is None or raw.closed or raw.broken


def run_group(
    alias: str,
    client_id: int,
    items: list[tuple[int, TransferRequest, bool]],
    *,
    render: Render,
    key_param: str,
    look_first: bool = True,
    drain: bool = True,
) -> list[ItemResult]:
    """Create the transfers of `items` (index, request, defer the response?), all paid from `alias`.

    Keys already recorded get their repeat's answer. With `look_first` False (one request:
    a repeat is rare) the records are only read if the insert finds the key taken. With
    `drain` False the caller runs the saga of what it created itself (and asks for a drain
    if it cannot).
    """
    for attempt in range(_GROUP_ATTEMPTS):
        records = _existing_records(alias, client_id, [r for _, r, _ in items]) if look_first or attempt else {}
        fresh = [(i, r, d) for i, r, d in items if (r.payer_id, r.idempotency_key) not in records]
        results: list[ItemResult] = []
        try:
            if fresh:
                with transaction.atomic(using=alias):
                    results = _first_steps(alias, client_id, fresh, render)
        except (IntegrityError, OperationalError) as exc:
            # A concurrent request committed one of these keys first, or a lock timed out:
            # nothing of this group was written; redo it against the records now committed.
            if attempt == _GROUP_ATTEMPTS - 1 or (isinstance(exc, OperationalError) and _lost_connection(alias)):
                raise
            log.info("transfer group raced; redoing it", extra={"shard": alias, "error": type(exc).__name__})
            continue
        for index, request, _ in items:
            record = records.get((request.payer_id, request.idempotency_key))
            if record is not None:
                results.append(_repeat(alias, index, request, record, render, key_param))
        if drain and any(r.transfer is not None and r.transfer.status == TransferStatus.DEBITED for r in results):
            request_drain(alias)
        return results
    raise AssertionError("unreachable")


def transfer_create(
    request: TransferRequest, *, render: Render, defer_response: bool = False, drain: bool = True
) -> ItemResult:
    """Create one transfer on the payer's shard, its first step in the same transaction.

    The transaction debits the payer (and, on one shard, credits the payee), inserts the
    transfer in the status that reached with its events, and inserts the idempotency record
    with the response: a repeat (even a concurrent one, which waits on the record's unique
    index and then rolls back) replays that response. With `defer_response` the response is
    stored later (`transfer_store_response`); until then a repeat gets 409. With `drain`
    False no drain is asked for: the caller advances the transfer itself (`advance_inline`).
    Refusals are raised (WalletNotFound, CurrencyMismatch, IdempotencyKeyReused,
    IdempotencyRequestInProgress).
    """
    with one_map():  # the payer's shard, the wallets locked and same-shard or not: one reading
        alias = alias_for_id(request.payer_id)
        [result] = run_group(
            alias, request.client_id, [(0, request, defer_response)], render=render, key_param="Idempotency-Key",
            look_first=False, drain=drain,
        )  # fmt: skip
    if result.error is not None:
        raise result.error
    return result


def advance_inline(transfer: Transfer) -> Transfer:
    """Run a just-debited transfer's remaining steps in this process (the payee's credit and
    the completion, each its own transaction, guarded like every saga step), instead of
    handing it to a drain: no Celery hop, no wait for a worker. If a step cannot run now
    (a shard down, a move's fence, a race), a drain is asked for and the transfer is
    returned as last read; the saga finishes it as it would any other."""
    from apps.transfers.saga import transfer_advance

    try:
        return transfer_advance(transfer.id)
    except Exception:
        log.info(
            "inline advance did not finish; handed to a drain", extra={"transfer_id": str(transfer.id)}, exc_info=True
        )
        request_drain(alias_for_id(transfer.id))
        return transfer
