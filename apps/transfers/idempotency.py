"""How long an Idempotency-Key means something, and what a repeat gets: one rule for every endpoint.

- A record is written in the transaction of the request's effect, with the response, or with
  none yet while a waiting request (`?wait=`) is still running.
- A repeat with another body: `idempotency_key_reused`. With the same body: the stored
  response; while none is stored: `idempotency_request_in_progress` (409, retry), until the
  first request is ABANDONED_AFTER old (it died): then the transfer as it stands now is
  stored as the key's response, once, and replayed from then on.
- Lifetime: a record is kept at least KEY_TTL after its request, and for as long as its
  transfer is in flight, so a client retrying a transfer it has no final answer for always
  finds it. Only then may `idempotency_records_purge` delete it; after that the key is
  forgotten and may be used again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections
from django.utils import timezone

from apps.common.errors import DomainError, IdempotencyKeyReused
from apps.sharding.routing import shard_aliases
from apps.transfers.errors import IdempotencyRequestInProgress


def fingerprint_of(body: dict[str, object]) -> str:
    """What a repeat of an Idempotency-Key is compared by: the request's fields, canonically hashed."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def key_ttl() -> timedelta:
    return timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)


def abandoned_after() -> timedelta:
    """A waiting request answers within TRANSFER_MAX_WAIT_SECONDS; twice that and it is gone."""
    return timedelta(seconds=settings.TRANSFER_MAX_WAIT_SECONDS * 2)


@dataclass(frozen=True)
class StoredRecord:
    id: int
    fingerprint: str
    transfer_id: object
    response_status: int | None
    response_body: str | None
    created_at: datetime


@dataclass(frozen=True)
class Replay:
    """Send the stored response again (`store_current` first when the first request was abandoned)."""

    record: StoredRecord
    store_current: bool = False


def verdict(record: StoredRecord, fingerprint: str, *, key_param: str, now: datetime | None = None) -> Replay:
    """What a repeat of `record`'s key with a body of `fingerprint` gets; raises the refusals."""
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused("This key was used with a different transfer.", param=key_param)
    if record.response_status is not None:
        return Replay(record)
    if record.created_at > (now or timezone.now()) - abandoned_after():
        raise IdempotencyRequestInProgress(param=key_param)
    return Replay(record, store_current=True)


def refusal_of(exc: DomainError) -> dict[str, str | None]:
    return {"code": exc.code, "message": exc.message, "param": exc.param}


_PURGE_SQL = """
DELETE FROM transfers_idempotency i
 USING transfers_transfer t
 WHERE t.id = i.transfer_id AND i.created_at < %s AND t.status IN ('completed', 'failed')
   AND sharding_serves(t.id)
"""


def idempotency_records_purge(*, now: datetime | None = None) -> int:
    """Delete the records past their lifetime (see the module's docstring), on every shard."""
    cutoff = (now or timezone.now()) - key_ttl()
    deleted = 0
    for alias in shard_aliases():
        with connections[alias].cursor() as cursor:
            cursor.execute(_PURGE_SQL, [cutoff])
            deleted += cursor.rowcount
    return deleted
