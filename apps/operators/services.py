"""Operator actions. Each one writes its audit record on `default`, then runs one service
that changes one shard in its own transaction, then completes the record with the outcome.

The record and the shard write cannot share a transaction (two databases), so the record
comes first: an action is never done without a trace, and one whose process died half-way
shows as `pending`.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, User
from django.core.management.base import CommandError
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from apps.common.errors import DomainError
from apps.ledger.errors import WalletNotFound
from apps.ledger.models import Wallet, WalletStatus
from apps.ledger.services import wallet_set_status
from apps.operators.errors import ReasonRequired
from apps.operators.models import ActionKind, ActionOutcome, OperatorAction
from apps.sharding.fence import check_missing_are_served, retry_while_fenced
from apps.sharding.routing import alias_for_id
from apps.sharding.shardmap import ShardMapError
from apps.transfers.errors import ShardUnavailable, TransferNotInFlight
from apps.transfers.services import transfer_force_compensate, transfer_redrive

log = logging.getLogger(__name__)


def command_line_actor() -> str:
    """Who runs a manage.py command: the login (the one behind sudo, if any) and the host."""
    login = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"command line: {login}@{socket.gethostname()}"[:150]


def _run(
    *,
    actor: AbstractBaseUser | None,
    action: ActionKind,
    target_id: uuid.UUID,
    reason: str,
    perform: Callable[[], str],
) -> OperatorAction:
    """Record the action, run `perform` (which returns what it did, in words), record the outcome.
    No `actor`: the command line (`command_line_actor`)."""
    reason = reason.strip()
    if not reason:
        raise ReasonRequired(param="reason")
    try:
        shard = alias_for_id(target_id)
    except (ShardMapError, ValueError):
        shard = ""  # an id no bucket of this deployment holds: recorded, and refused below
    with transaction.atomic(using="default"):
        record = OperatorAction.objects.using("default").create(
            actor=cast(User, actor),
            actor_username=actor.get_username() if actor is not None else command_line_actor(),
            action=action,
            target_id=target_id,
            shard=shard,
            reason=reason,
            created_at=timezone.now(),
        )
    if not shard:
        _finish(record, ActionOutcome.REFUSED, f"{target_id} is not an id of this deployment's buckets.")
        return record
    try:
        # A range being switched, or a copy a move left behind: wait for the owner, act there.
        record.detail = retry_while_fenced(perform, wait_seconds=settings.SHARD_MOVE_WAIT_SECONDS)
        record.outcome = ActionOutcome.SUCCEEDED
    except DomainError as exc:
        unreachable = isinstance(exc, ShardUnavailable)
        record.outcome = ActionOutcome.FAILED if unreachable else ActionOutcome.REFUSED
        record.detail = exc.message
    except DatabaseError as exc:
        record.outcome = ActionOutcome.FAILED
        record.detail = f"{record.shard} could not be changed ({type(exc).__name__}: {exc})".strip()[:2000]
    except Exception as exc:
        _finish(record, ActionOutcome.FAILED, f"Unexpected error: {type(exc).__name__}: {exc}"[:2000])
        raise
    _finish(record, record.outcome, record.detail)
    log.info(
        "operator action",
        extra={
            "action": str(action),
            "target_id": str(target_id),
            "shard": record.shard,
            "actor": record.actor_username,
            "outcome": str(record.outcome),
            **_target_field(action, target_id),
        },
    )
    return record


@contextmanager
def recorded_command(action: ActionKind, *, shard: str, subject: str, reason: str) -> Iterator[OperatorAction]:
    """A command-line action on a stream or a move: recorded before it runs, its outcome after.

    The body may set `record.detail`. A CommandError is a refusal (nothing changed), any other
    exception a failure; both are recorded and raised again."""
    reason = reason.strip() or "(no reason given)"
    with transaction.atomic(using="default"):
        record = OperatorAction.objects.using("default").create(
            actor=None, actor_username=command_line_actor(), action=action, subject=subject[:200], shard=shard[:32],
            reason=reason, created_at=timezone.now(),
        )  # fmt: skip
    try:
        yield record
    except CommandError as exc:
        _finish_if_reachable(record, ActionOutcome.REFUSED, str(exc)[:2000])
        raise
    except BaseException as exc:
        _finish_if_reachable(record, ActionOutcome.FAILED, f"{type(exc).__name__}: {exc}"[:2000])
        raise
    _finish(record, ActionOutcome.SUCCEEDED, record.detail or "done")
    log.info(
        "operator action",
        extra={"action": str(action), "shard": shard, "actor": record.actor_username, "subject": subject},
    )


def _finish_if_reachable(record: OperatorAction, outcome: ActionOutcome, detail: str) -> None:
    """The outcome of a command that failed, unless the control database is what failed: the
    record then stays `pending`, and the command's own error is the one the operator sees."""
    try:
        _finish(record, outcome, detail)
    except DatabaseError as exc:
        log.warning("operator action %s left pending: %s", record.id, exc)


def _target_field(action: str, target_id: uuid.UUID) -> dict[str, str]:
    kind = "wallet" if action.endswith("wallet") else "hold" if action.endswith("hold") else "transfer"
    return {f"{kind}_id": str(target_id)}


def _finish(record: OperatorAction, outcome: ActionOutcome, detail: str) -> None:
    record.outcome, record.detail, record.finished_at = outcome, detail, timezone.now()
    with transaction.atomic(using="default"):
        record.save(using="default", update_fields=["outcome", "detail", "finished_at"])


def _set_wallet_status(wallet_id: uuid.UUID, status: WalletStatus) -> str:
    alias = alias_for_id(wallet_id)
    with transaction.atomic(using=alias):
        # Locked, so the status we report as the previous one is the one we changed. Only a
        # shard that serves the wallet answers: a copy a move left behind may say "already".
        served = ["sharding_serves(ledger_wallet.id)"]
        wallet = Wallet.objects.using(alias).select_for_update().filter(id=wallet_id).extra(where=served).first()  # noqa: S610 (constant SQL)
        if wallet is None:
            with connections[alias].cursor() as cursor:
                check_missing_are_served(cursor, [wallet_id])  # not served here: look on the owner
            raise WalletNotFound()
        if wallet.status == status:
            return f"The wallet was already {status}; nothing changed."
        wallet_set_status(wallet_id=wallet_id, status=status)
    return f"The wallet is now {status} (was {wallet.status})."


def operator_freeze_wallet(*, actor: AbstractBaseUser, wallet_id: uuid.UUID, reason: str) -> OperatorAction:
    """Freeze a wallet: it can neither pay nor receive (transfers to it fail `payee_frozen`, payer refunded)."""
    return _run(
        actor=actor,
        action=ActionKind.FREEZE_WALLET,
        target_id=wallet_id,
        reason=reason,
        perform=lambda: _set_wallet_status(wallet_id, WalletStatus.FROZEN),
    )


def operator_unfreeze_wallet(*, actor: AbstractBaseUser, wallet_id: uuid.UUID, reason: str) -> OperatorAction:
    """Make a frozen wallet active again."""
    return _run(
        actor=actor,
        action=ActionKind.UNFREEZE_WALLET,
        target_id=wallet_id,
        reason=reason,
        perform=lambda: _set_wallet_status(wallet_id, WalletStatus.ACTIVE),
    )


def _redrive(transfer_id: uuid.UUID) -> str:
    if not transfer_redrive(transfer_id):
        raise TransferNotInFlight("The transfer is not in flight (or does not exist); nothing to re-drive.")
    return "Un-parked, attempts reset, saga triggered."


def operator_redrive_transfer(*, actor: AbstractBaseUser | None, transfer_id: uuid.UUID, reason: str) -> OperatorAction:
    """Un-park a stalled or parked transfer and trigger its saga again (no actor: the command line)."""
    return _run(
        actor=actor,
        action=ActionKind.REDRIVE_TRANSFER,
        target_id=transfer_id,
        reason=reason,
        perform=lambda: _redrive(transfer_id),
    )


_COMPENSATION_WORDS = {
    "failed": "It was still pending, nothing had been debited: failed (operator_compensated), no refund needed.",
    "refunded": "The payer was refunded; the transfer failed ({reason}).",
    "completed": "The payee had in fact been credited: the transfer was completed, not refunded.",
}


def _compensate(transfer_id: uuid.UUID) -> str:
    result = transfer_force_compensate(transfer_id)
    return _COMPENSATION_WORDS[result.outcome].format(reason=result.transfer.failure_reason)


def operator_compensate_transfer(*, actor: AbstractBaseUser, transfer_id: uuid.UUID, reason: str) -> OperatorAction:
    """Force-compensate a transfer that cannot complete (see transfers.services.transfer_force_compensate)."""
    return _run(
        actor=actor,
        action=ActionKind.COMPENSATE_TRANSFER,
        target_id=transfer_id,
        reason=reason,
        perform=lambda: _compensate(transfer_id),
    )


def _void_hold(hold_id: uuid.UUID, reason: str) -> str:
    from apps.holds.services import hold_void

    hold = hold_void(hold_id, client_id=None, note=f"operator: {reason}")
    return f"Voided: {hold.amount_minor} released to the payer's wallet."


def operator_void_hold(*, actor: AbstractBaseUser, hold_id: uuid.UUID, reason: str) -> OperatorAction:
    """Release a hold the client cannot or will not resolve (a capture or an expiry that came first wins)."""
    return _run(
        actor=actor,
        action=ActionKind.VOID_HOLD,
        target_id=hold_id,
        reason=reason,
        perform=lambda: _void_hold(hold_id, reason),
    )
