"""Batch submission: up to 1,000 transfers in one request, each with its own key and result.

Each item gets the guarantees of `POST /v1/transfers` (its own Idempotency key, replay,
422 on reuse) and one bad item never sinks the others. Items are grouped by the payer's
shard and each group commits in one transaction: one commit for many transfers is what
makes batches fast. A group that loses a race (a concurrent request with one of its keys,
or a deadlock) is rolled back and redone from the records then committed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from apps.sharding.routing import alias_for_id
from apps.transfers.batch_writer import GroupPlan, lock_wallets, plan_item, write_plan
from apps.transfers.models import IdempotencyRecord, TransferStatus
from apps.transfers.services import Render, TransferRequest, new_transfer, request_drain
from apps.transfers.validation import Invalid, parse_transfer_body, valid_idempotency_key

log = logging.getLogger(__name__)

MAX_BATCH = 1000
_GROUP_ATTEMPTS = 3


@dataclass
class ItemResult:
    index: int
    outcome: str  # accepted | replayed | rejected
    status: int
    transfer_json: str | None = None  # the transfer exactly as the single endpoint would send it
    error: dict[str, Any] | None = None

    @classmethod
    def rejected(cls, index: int, status: int, code: str, message: str, param: str | None) -> ItemResult:
        return cls(index, "rejected", status, error={"code": code, "message": message, "param": param})


def parse_item(client_id: int, index: int, raw: object) -> TransferRequest | ItemResult:
    """Validate one item as the single endpoint validates its body and header."""
    if not isinstance(raw, dict):
        return ItemResult.rejected(index, 400, "parameter_invalid", "Each transfer must be a JSON object.", None)
    if "idempotency_key" not in raw:
        return ItemResult.rejected(index, 400, "idempotency_key_missing", "This field is required.", "idempotency_key")
    key = raw["idempotency_key"]
    if not valid_idempotency_key(key):
        message = "1 to 255 printable ASCII characters."
        return ItemResult.rejected(index, 400, "idempotency_key_invalid", message, "idempotency_key")
    parsed = parse_transfer_body(client_id, raw, key)
    if isinstance(parsed, Invalid):
        return ItemResult.rejected(index, parsed.status, parsed.code, parsed.message, parsed.param)
    return parsed


def _replay_or_reject(index: int, request: TransferRequest, record: dict[str, Any]) -> ItemResult:
    if record["fingerprint"] != request.fingerprint:
        return ItemResult.rejected(
            index, 422, "idempotency_key_reused", "This key was used with a different transfer.", "idempotency_key"
        )
    if record["response_status"] is None:
        return ItemResult.rejected(
            index, 409, "idempotency_request_in_progress", "The first request with this key is running.",
            "idempotency_key",
        )  # fmt: skip
    return ItemResult(index, "replayed", record["response_status"], transfer_json=record["response_body"])


def _existing_records(alias: str, client_id: int, requests: list[TransferRequest]) -> dict[tuple, dict]:
    wanted = {(r.payer_id, r.idempotency_key) for r in requests}
    rows = IdempotencyRecord.objects.using(alias).filter(
        client_id=client_id,
        payer_id__in={r.payer_id for r in requests},
        key__in={r.idempotency_key for r in requests},
    )
    return {
        (row["payer_id"], row["key"]): row
        for row in rows.values("payer_id", "key", "fingerprint", "response_status", "response_body")
        if (row["payer_id"], row["key"]) in wanted
    }


def _run_group(alias: str, client_id: int, items: list[tuple[int, TransferRequest]], render: Render) -> list:
    """All items paid from one shard: one transaction, wallets locked once, set-based writes."""
    for attempt in range(_GROUP_ATTEMPTS):
        results: list[ItemResult] = []
        records = _existing_records(alias, client_id, [r for _, r in items])
        fresh = [(i, r) for i, r in items if (r.payer_id, r.idempotency_key) not in records]
        debited = False
        try:
            with transaction.atomic(using=alias):
                results, debited = _first_steps(alias, client_id, fresh, render)
        except (IntegrityError, OperationalError) as exc:
            # A concurrent request committed one of these keys first, or a lock timed out:
            # nothing of this group was written; redo it against the records now committed.
            if attempt == _GROUP_ATTEMPTS - 1:
                raise
            log.info("batch group raced; redoing it", extra={"shard": alias, "error": type(exc).__name__})
            continue
        for index, request in items:
            record = records.get((request.payer_id, request.idempotency_key))
            if record is not None:
                results.append(_replay_or_reject(index, request, record))
        if debited:
            request_drain(alias)
        return results
    raise AssertionError("unreachable")


def _first_steps(
    alias: str, client_id: int, fresh: list[tuple[int, TransferRequest]], render: Render
) -> tuple[list[ItemResult], bool]:
    now = timezone.now()
    touched = {r.payer_id for _, r in fresh} | {r.payee_id for _, r in fresh if alias_for_id(r.payee_id) == alias}
    wallets = lock_wallets(alias, touched)
    plan = GroupPlan()
    results: list[ItemResult] = []
    records: list[tuple] = []
    for index, request in fresh:
        payer = wallets.get(request.payer_id)
        if payer is None or payer.owner_id != client_id:
            results.append(ItemResult.rejected(index, 404, "wallet_not_found", "No such wallet.", "from"))
            continue
        if payer.currency != request.currency:
            message = f"The paying wallet holds {payer.currency}, not {request.currency}."
            results.append(ItemResult.rejected(index, 422, "currency_mismatch", message, "currency"))
            continue
        transfer = new_transfer(request, now=now)
        plan_item(transfer, wallets, plan, now)
        status, body = render(transfer, plan.planned[-1].events)
        records.append((client_id, request.payer_id, request.idempotency_key, request.fingerprint, transfer.id,
                        status, body, now))  # fmt: skip
        results.append(ItemResult(index, "accepted", status, body))
    if plan.planned:
        write_plan(alias, plan, wallets, records, now)
    return results, any(p.transfer.status == TransferStatus.DEBITED for p in plan.planned)


def transfer_create_batch(*, client_id: int, items: list[object], render: Render) -> list[ItemResult]:
    """Create many transfers; returns one result per item, in the order given."""
    results: dict[int, ItemResult] = {}
    first_of_key: dict[tuple, tuple[int, TransferRequest]] = {}
    repeats: list[tuple[int, TransferRequest, int]] = []
    groups: dict[str, list[tuple[int, TransferRequest]]] = defaultdict(list)
    for index, raw in enumerate(items):
        parsed = parse_item(client_id, index, raw)
        if isinstance(parsed, ItemResult):
            results[index] = parsed
            continue
        scope = (parsed.payer_id, parsed.idempotency_key)
        if scope in first_of_key:  # the same key twice in one batch: the later one is a repeat
            repeats.append((index, parsed, first_of_key[scope][0]))
            continue
        first_of_key[scope] = (index, parsed)
        groups[alias_for_id(parsed.payer_id)].append((index, parsed))
    for alias, group in groups.items():
        for result in _run_group(alias, client_id, group, render):
            results[result.index] = result
    for index, request, first_index in repeats:
        first = results[first_index]
        first_request = first_of_key[(request.payer_id, request.idempotency_key)][1]
        if first.outcome == "rejected":
            results[index] = ItemResult(index, "rejected", first.status, error=first.error)
        elif first_request.fingerprint != request.fingerprint:
            results[index] = ItemResult.rejected(
                index, 422, "idempotency_key_reused", "This key was used with a different transfer.",
                "idempotency_key",
            )  # fmt: skip
        else:
            results[index] = ItemResult(index, "replayed", first.status, transfer_json=first.transfer_json)
    return [results[i] for i in range(len(items))]
