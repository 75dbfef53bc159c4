"""Everything the clients asked and every answer they got, per idempotency key.

An operation is one logical request: one key, one body. It may be sent many times (after
a timeout, a dropped connection, a 5xx or a 409 "in progress") and every answer is kept,
so the checks can tell whether one key was ever answered with two different transfers.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Answers that leave the outcome open: the client sends the same key again.
IN_PROGRESS = "idempotency_request_in_progress"


@dataclass
class Answer:
    at: float  # seconds on the run's clock
    status: int | None  # None: no answer at all (timeout, connection refused or reset)
    object_id: str | None = None  # the transfer's id, or the ledger entry's for deposits and withdrawals
    state: str | None = None  # the transfer's status in the answer
    reason: str | None = None  # its failure_reason
    error: str | None = None  # the error code, or why there was no answer
    replayed: bool = False

    @property
    def definitive(self) -> bool:
        if self.status is None or self.status >= 500:
            return False
        return not (self.status == 409 and self.error == IN_PROGRESS)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, False)}


@dataclass
class Op:
    """One key: a transfer, a deposit, a withdrawal, a hold or a refund, with every answer it got;
    or a hold's capture or void (`key` the hold's), which is answered once and refused after.
    A refund's `amount` 0 asks for what remains refundable."""

    key: str
    kind: str  # transfer | deposit | withdrawal | hold | capture | void | refund
    via: str  # single | single_wait | batch | deposit | withdrawal | hold | capture | void | refund
    intent: str  # normal | frozen_payee | currency_payee | too_large
    wallet: str  # the payer, or the wallet funded / withdrawn from
    amount: int
    currency: str
    payee: str | None = None
    answers: list[Answer] = field(default_factory=list)
    expires_at: str | None = None  # a hold's, fixed when the step is drawn: every retry sends the same body
    hold_id: str | None = None  # a capture's or void's hold
    refund_of: str | None = None  # a refund's original transfer, chosen when the step runs

    @property
    def final(self) -> Answer | None:
        """The last definitive answer, if any."""
        return next((a for a in reversed(self.answers) if a.definitive), None)

    @property
    def accepted(self) -> bool:
        """Answered 201 or 202 at least once: the service took it on."""
        return any(a.status in (201, 202) and a.object_id for a in self.answers)

    @property
    def object_ids(self) -> set[str]:
        return {a.object_id for a in self.answers if a.object_id}

    def body(self) -> dict[str, Any]:
        if self.kind == "transfer":
            return {"from": self.wallet, "to": self.payee, "amount_minor": self.amount, "currency": self.currency}
        if self.kind == "hold":
            body = {"from": self.wallet, "to": self.payee, "amount_minor": self.amount, "currency": self.currency}
            return {**body, "expires_at": self.expires_at}
        if self.kind == "void" or (self.kind == "refund" and not self.amount):
            return {}
        return {"amount_minor": self.amount}

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "via": self.via,
            "intent": self.intent,
            "wallet": self.wallet,
            "payee": self.payee,
            "amount": self.amount,
            **({"hold_id": self.hold_id} if self.hold_id else {}),
            **({"refund_of": self.refund_of} if self.refund_of else {}),
            "answers": [a.as_dict() for a in self.answers],
        }


@dataclass(frozen=True)
class Read:
    """A GET during the run: a transfer's status or a wallet's available balance."""

    at: float
    what: str  # transfer | balance
    target: str
    value: str | int


class History:
    """Thread-safe: client threads add their operations, reads and request outcomes here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ops: list[Op] = []
        self.reads: list[Read] = []
        self.requests: Counter[str] = Counter()

    def add_op(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)

    def add_read(self, read: Read) -> None:
        with self._lock:
            self.reads.append(read)

    def count_request(self, endpoint: str, status: int | None) -> None:
        with self._lock:
            self.requests[f"{endpoint} {status if status is not None else 'no answer'}"] += 1

    @property
    def request_total(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def unresolved(self) -> list[Op]:
        with self._lock:
            return [op for op in self.ops if op.final is None]
