"""Celery tasks: thin triggers around the saga. Ids in, state re-read from the database."""

from __future__ import annotations

import contextlib
import logging
import random
import uuid
from datetime import timedelta

import redis
from celery import shared_task
from celery.app.task import Task
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError

from apps.common.queue_age import oldest_waiting_seconds
from apps.common.redis_client import redis_client
from apps.observability.metrics import (
    SAGA_MOVE_WAITS,
    SAGA_PARKED,
    SAGA_RETRIES,
    SWEEPER_DEFERRED,
    SWEEPER_REDRIVEN,
)
from apps.sharding.fence import BucketsMoving, is_fence_refusal, retry_while_fenced
from apps.sharding.moves import Move
from apps.sharding.routing import alias_for_id, shard_aliases
from apps.transfers import idempotency, saga, services
from apps.transfers.models import Transfer

log = logging.getLogger(__name__)

# Shard down, connection lost, serialization failure, deadlock: worth retrying.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)


def retry_delay(attempt: int) -> float:
    """Exponential backoff with full jitter, capped."""
    ceiling = min(settings.SAGA_RETRY_MAX_SECONDS, settings.SAGA_RETRY_BASE_SECONDS * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def advance_transfer(self: Task, transfer_id: str) -> str | None:
    """Run a transfer's remaining saga steps; retry errors with backoff, park when they persist.

    Attempts are counted in the transfer's row before each run (not in the message, which a
    killed worker's redelivery does not count), and parking goes by that count.
    """
    tid = uuid.UUID(transfer_id)
    try:
        attempt = services.transfer_begin_attempt(tid)
    except DatabaseError as exc:  # the payer's shard is down: nothing can run; the sweeper finds it later too
        raise self.retry(exc=exc, countdown=retry_delay(self.request.retries)) from exc
    if attempt is None:
        return None  # terminal, parked (an operator decides) or no such transfer
    if attempt > settings.SAGA_MAX_RETRIES + 1:  # the first attempt and its retries are spent
        if services.transfer_park(tid, f"gave up after {attempt - 1} attempts"):
            SAGA_PARKED.inc()
        log.error("transfer parked", extra={"transfer_id": transfer_id, "attempts": attempt - 1})
        return None
    try:
        status = _advance_waiting_out_moves(tid)
    except BucketsMoving as exc:
        # Held up by a move's fence, not failed: the attempt is given back, so however long
        # the fence stays (a slow switch, a stalled mover) the transfer waits, never parks.
        with contextlib.suppress(DatabaseError):
            services.transfer_give_back_attempt(tid, f"waiting for a bucket move: {exc}")
        SAGA_MOVE_WAITS.inc()
        raise self.retry(exc=exc, countdown=retry_delay(self.request.retries)) from exc
    except Transfer.DoesNotExist:
        log.warning("no such transfer", extra={"transfer_id": transfer_id})
        return None
    except Exception as exc:
        # Transient errors (a shard down, a lost connection, a deadlock) and unexpected ones
        # alike: retry with backoff, then park where an operator sees it. Never spin, never drop.
        error = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(DatabaseError):  # the payer's shard may be down too
            services.transfer_record_error(tid, error)
        log.warning("transfer step failed, retrying", extra={"transfer_id": transfer_id, "attempt": attempt})
        SAGA_RETRIES.labels(error=type(exc).__name__).inc()
        raise self.retry(exc=exc, countdown=retry_delay(attempt)) from exc
    if attempt > 1:
        # An earlier try failed and this one did not: the others that failed alike need not
        # wait for their own tries, one by one behind the queue.
        request_retry_drain(alias_for_id(tid))
    return status


DRAIN_BATCH = 500


def _flags() -> redis.Redis:
    # One client per process and Redis (settings may point elsewhere, as tests do).
    place = (settings.REDIS_URL, settings.REDIS_SENTINEL)
    client = _flag_clients.get(place)
    if client is None:
        client = _flag_clients[place] = redis_client(timeout=0.5)
    return client


_flag_clients: dict[tuple[str, object], redis.Redis] = {}


BACKLOG_PATIENCE = 10  # stall windows the sweeper waits, during a backlog, before a re-drive


def broker_backlog() -> int | None:
    """Task messages waiting in the broker's queue, or None when Redis cannot say."""
    from wallet_project.celery import app

    try:
        return int(_flags().llen(app.conf.task_default_queue))
    except redis.RedisError:
        return None


def _drain_flag(alias: str, kind: str = "drain") -> str:
    return f"shardwallet:{kind}:{alias}"


def request_drain(alias: str) -> None:
    """Enqueue one drain of `alias` unless one is already queued (a flag with a short expiry).

    Many API requests then cost one Celery message. Best effort: if Redis is down, the
    sweeper finds the transfers later.
    """
    _request_once(drain_transfers, alias, _drain_flag(alias))


def request_retry_drain(alias: str) -> None:
    """Enqueue one `drain_retried_transfers` of `alias` unless one is already queued. Best
    effort: without it, each transfer's own task still finishes it."""
    _request_once(drain_retried_transfers, alias, _drain_flag(alias, "retry-drain"))


def _request_once(task: Task, alias: str, flag: str) -> None:
    try:
        if not _flags().set(flag, "1", nx=True, ex=5):
            return  # one is already queued; it will see this transfer
    except redis.RedisError:
        log.exception("could not request a drain", extra={"shard": alias})
        return
    try:
        task.apply_async(args=[alias])
    except Exception:
        # None is queued after all: drop the flag so that the next transfer asks again.
        log.exception("could not enqueue a drain", extra={"shard": alias})
        with contextlib.suppress(redis.RedisError):
            _flags().delete(flag)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def drain_transfers(self: Task, alias: str) -> int:
    """Run the saga for the debited transfers of one payer shard, many per transaction."""
    with contextlib.suppress(redis.RedisError):
        _flags().delete(_drain_flag(alias))  # from here on, a new transfer asks for a new drain
    try:
        return drain_shard(alias)
    except TRANSIENT_ERRORS as exc:
        raise self.retry(exc=exc, countdown=retry_delay(self.request.retries)) from exc
    except DatabaseError as exc:
        if not is_fence_refusal(exc):
            raise
        raise self.retry(exc=exc, countdown=0.2) from exc  # a move fenced the range mid-claim


@shared_task(acks_late=True, reject_on_worker_lost=True)
def drain_retried_transfers(alias: str) -> int:
    """Finish in batches the transfers of one payer shard whose own tasks are retrying
    (`saga.drain_retried`): sent when one of them succeeds, the sign that its shards are back."""
    with contextlib.suppress(redis.RedisError):
        _flags().delete(_drain_flag(alias, "retry-drain"))
    try:
        return saga.drain_retried(alias, limit=DRAIN_BATCH)
    except DatabaseError:  # the payer's shard failed again: the transfers' own tasks go on
        log.warning("retry drain failed on its payer shard", extra={"shard": alias})
        return 0


def drain_shard(alias: str, *, left_overs_here: bool = True) -> int:
    """Drain `alias` until a round claims less than a full batch; left-overs go one by one,
    here or (`left_overs_here` False: a drain that must stay quick, as the API's) each in
    its own task. Returns how many completed. Errors of the drain itself propagate."""
    done = 0
    while True:
        result = saga.drain_debited(alias, limit=DRAIN_BATCH)
        done += result.completed
        for transfer_id in result.left_over:
            if transfer_id in result.transient:
                _hand_over(transfer_id, "payee shard unavailable during a drain")
            elif left_overs_here:
                _advance_now(transfer_id)
            else:
                # One by one here could wait out a move for seconds each, holding up the
                # drains of every transfer that arrives meanwhile.
                advance_transfer.apply_async(args=[str(transfer_id)])
        if result.claimed < DRAIN_BATCH:
            return done


def drain_moved_transfers(move: Move) -> None:
    """After a move: the transfers in flight that moved are drained on their new shard now."""
    request_drain(move.target)


def _advance_waiting_out_moves(transfer_id: uuid.UUID) -> str:
    """Its steps; a step refused because a bucket is switching shards runs again on the new owner."""
    return retry_while_fenced(
        lambda: saga.transfer_advance(transfer_id).status, wait_seconds=settings.SHARD_MOVE_WAIT_SECONDS
    )


def _advance_now(transfer_id: uuid.UUID) -> None:
    """Run one left-over transfer; whatever goes wrong stays with it, never with the drain."""
    try:
        _advance_waiting_out_moves(transfer_id)
    except Exception as exc:
        log.warning("transfer failed in a drain; handed to its own task", extra={"transfer_id": str(transfer_id)})
        with contextlib.suppress(Exception):
            _hand_over(transfer_id, f"{type(exc).__name__}: {exc}")


def _hand_over(transfer_id: uuid.UUID, error: str) -> None:
    """Leave the transfer to its own task, with retries, backoff and parking."""
    with contextlib.suppress(DatabaseError):
        services.transfer_record_error(transfer_id, error)  # its drain's claim counted the attempt
    advance_transfer.apply_async(args=[str(transfer_id)], countdown=retry_delay(0))


def _stall_window() -> timedelta:
    """How long a transfer must be untouched to be re-driven now.

    While the queue's oldest message has waited longer than the stall window, only transfers
    untouched since before it was sent: any trigger sent for them has been taken already, so
    theirs was lost; the others' triggers are still queued, and another would only lengthen
    the queue (every queued transfer looks stalled after an outage, and a re-drive at each
    sweep kept up to seven messages per transfer queued in `make test-hosts` (d)). Where the
    oldest message has no time on it, a backlog of SAGA_SWEEP_MAX_BACKLOG messages or more
    stretches the window BACKLOG_PATIENCE times.
    """
    window = timedelta(seconds=settings.SAGA_STALLED_AFTER_SECONDS)
    try:
        from wallet_project.celery import app

        waited = oldest_waiting_seconds(_flags(), app.conf.task_default_queue)
    except redis.RedisError:
        return window  # Redis cannot say: the re-drives cannot be sent either
    if waited is not None:
        if waited <= window.total_seconds():
            return window
        SWEEPER_DEFERRED.inc()
        log.warning("sweeper waits for the broker's queue", extra={"oldest_message_seconds": round(waited, 1)})
        return timedelta(seconds=waited)
    backlog = broker_backlog()
    if backlog is not None and backlog >= settings.SAGA_SWEEP_MAX_BACKLOG:
        SWEEPER_DEFERRED.inc()
        log.warning("sweeper holds back for the broker's backlog", extra={"queued_messages": backlog})
        return window * BACKLOG_PATIENCE
    return window


@shared_task
def sweep_stalled_transfers(limit_per_shard: int = 1000) -> int:
    """Re-drive in-flight transfers that nobody touched for a while (lost or dropped messages).

    The window grows with the broker's queue (`_stall_window`): after an outage the queue is
    longer than one window, so every queued transfer looks stalled, and re-sending them all at
    each sweep grew the queue faster than workers emptied it (`make test-hosts`, a partition:
    150,000 messages). The queued messages reach those transfers anyway; one really lost still
    gets its re-drive once every message sent before its last touch has been taken.
    """
    older_than = _stall_window()
    count = 0
    for alias in shard_aliases():
        try:
            ids = services.transfers_claim_stalled(alias=alias, older_than=older_than, limit=limit_per_shard)
        except DatabaseError:
            log.warning("sweeper cannot read shard", extra={"shard": alias})
            continue
        for transfer_id in ids:
            advance_transfer.apply_async(args=[str(transfer_id)])
        count += len(ids)
    SWEEPER_REDRIVEN.inc(count)
    if count:
        log.info("sweeper re-drove transfers", extra={"count": count})
    return count


@shared_task
def purge_idempotency_records() -> int:
    return idempotency.idempotency_records_purge()
