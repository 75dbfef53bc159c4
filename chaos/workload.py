"""What the clients do: a seeded stream of transfers, batches, deposits, withdrawals, holds, refunds and reads.

Each client thread draws from its own generator, seeded from the run's seed and the thread's
number, so a seed always produces the same requests (their interleaving is up to the OS).
Most transfers should complete; some are meant to fail and must fail the right way: to a
frozen payee, to a payee of another currency, to one that takes its owner's transfers only, or
for more than the payer holds.

Some requests are sent twice on purpose: a step sent again later with the same keys (a
client that lost the answer after all; sometimes through the other transfer endpoint, as
the key is shared), and single transfers sent by two connections at once (a client
retrying too eagerly). Each must get the first request's transfer back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from chaos.history import Op

SEED_DEPOSIT = 10_000_000  # per paying wallet: enough that ordinary transfers rarely run a payer dry
# ...except the lean ones (one per shard), which hover near zero so that concurrent debits
# race for the last units and the no-negative-balance guard is tested under faults too.
LEAN_DEPOSIT = 50_000
TOO_LARGE = 10**13  # more than any wallet here will ever hold

# Relative weights of what a client does next.
STEP_WEIGHTS = {
    "single": 40,
    "single_wait": 15,
    "batch": 15,
    "deposit": 10,
    "withdrawal": 8,
    "read_transfer": 8,
    "read_balance": 4,
    "resend": 5,
    "hold": 8,
    "refund": 5,
}
TWIN_SHARE = 0.1  # of single transfers, sent by two connections at once
SWITCH_SHARE = 0.3  # of resent transfers, sent through the other endpoint (single <-> batch)
# Relative weights of a transfer's intent.
INTENT_WEIGHTS = {"normal": 76, "frozen_payee": 7, "currency_payee": 7, "closed_payee": 5, "too_large": 5}


@dataclass(frozen=True)
class Wallets:
    """The wallets of a run, on every shard. Only `payers` belong to the client that sends requests."""

    payers: list[str]  # USD, active, owned by the requesting client
    other_payees: list[str]  # USD, active, owned by another client
    frozen: list[str]  # USD, frozen, another client's
    foreign: list[str]  # EUR, active, another client's
    closed: list[str]  # USD, another client's, taking its owner's transfers only (every other one frozen too)
    lean: list[str]  # some of the payers, funded with LEAN_DEPOSIT only
    shard_of: dict[str, str]

    @property
    def usd_payees(self) -> list[str]:
        return self.payers + self.other_payees


@dataclass
class Single:
    op: Op
    wait: float  # 0: answer at once
    twin: bool = False  # sent by two connections at the same time


@dataclass
class Batch:
    ops: list[Op]


@dataclass
class HoldStep:
    """A hold, then what the client does with it: capture part of it, void it, or let it expire."""

    op: Op
    then: str  # capture | void | expire
    part: int  # what a capture takes (at most the amount)


@dataclass
class RefundStep:
    """A refund of one of this client's transfers (chosen when it runs), whole (amount 0) or in part."""

    op: Op


@dataclass
class ReadStep:
    what: str  # transfer | balance
    target: str | None  # None: a transfer this client created, chosen when the step runs


@dataclass
class Resend:
    """A step this client sent before, sent again with the same keys and bodies."""

    step: Single | Batch | Op
    switch: bool = False  # a single transfer as a one-item batch, a batch's items as single requests


Step = Single | Batch | Op | ReadStep | Resend | HoldStep | RefundStep
HOLD_THEN = {"capture": 50, "void": 30, "expire": 20}


def ops_of(step: Single | Batch | Op) -> list[Op]:
    if isinstance(step, Single):
        return [step.op]
    if isinstance(step, Batch):
        return step.ops
    return [step]


@dataclass
class Workload:
    wallets: Wallets
    client: int
    rng: random.Random
    count: int = 0
    sent: list[Single | Batch | Op] = field(default_factory=list)

    def _key(self) -> str:
        self.count += 1
        return f"chaos-c{self.client}-{self.count}"

    def transfer(self, via: str) -> Op:
        w = self.wallets
        intent = self.rng.choices(list(INTENT_WEIGHTS), weights=list(INTENT_WEIGHTS.values()))[0]
        payer = self.rng.choice(w.payers)
        amount = self.rng.randint(1, 20_000)
        if intent == "frozen_payee":
            payee = self.rng.choice(w.frozen)
        elif intent == "currency_payee":
            payee = self.rng.choice(w.foreign)
        elif intent == "closed_payee":
            payee = self.rng.choice(w.closed)
        else:
            payee = self.rng.choice([p for p in w.usd_payees if p != payer])
            if intent == "too_large":
                amount = TOO_LARGE
        return Op(self._key(), "transfer", via, intent, payer, amount, "USD", payee=payee)

    def next_step(self) -> Step:
        kind = self.rng.choices(list(STEP_WEIGHTS), weights=list(STEP_WEIGHTS.values()))[0]
        if kind == "read_balance":
            return ReadStep("balance", self.rng.choice(self.wallets.payers))
        if kind == "read_transfer":
            return ReadStep("transfer", None)
        if kind == "resend":
            # Which steps were sent does not depend on timing, so this choice replays with the seed.
            if not self.sent:
                return ReadStep("transfer", None)
            return Resend(self.rng.choice(self.sent), switch=self.rng.random() < SWITCH_SHARE)
        if kind == "hold":
            return self.hold()
        if kind == "refund":
            # Whole or in part; parts often more than remains (refused 422), as clients get it wrong.
            amount = 0 if self.rng.random() < 0.3 else self.rng.randint(1, 15_000)
            return RefundStep(Op(self._key(), "refund", "refund", "normal", "", amount, "USD"))
        step = self._new_step(kind)
        self.sent.append(step)
        return step

    def hold(self) -> HoldStep:
        w = self.wallets
        payer = self.rng.choice(w.payers)
        payee = self.rng.choice([p for p in w.usd_payees if p != payer])
        too_large = self.rng.random() < 0.1
        amount = TOO_LARGE if too_large else self.rng.randint(1, 20_000)
        then = self.rng.choices(list(HOLD_THEN), weights=list(HOLD_THEN.values()))[0]
        # Expiring ones soon, so that the expiry job releases them during the run; the others
        # far enough away that no retry of theirs meets an expiry.
        seconds = self.rng.randint(3, 15) if then == "expire" else 3600
        expires = (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
        op = Op(self._key(), "hold", "hold", "too_large" if too_large else "normal", payer, amount, "USD", payee=payee,
                expires_at=expires)  # fmt: skip
        return HoldStep(op, then, self.rng.randint(1, max(1, min(amount, 20_000))))

    def _new_step(self, kind: str) -> Single | Batch | Op:
        if kind == "single":
            return Single(self.transfer("single"), wait=0, twin=self.rng.random() < TWIN_SHARE)
        if kind == "single_wait":
            wait = self.rng.choice([1, 2, 5])
            return Single(self.transfer("single_wait"), wait=wait, twin=self.rng.random() < TWIN_SHARE)
        if kind == "batch":
            return Batch([self.transfer("batch") for _ in range(self.rng.randint(2, 20))])
        wallet = self.rng.choice(self.wallets.payers)
        if kind == "deposit":
            return Op(self._key(), "deposit", "deposit", "normal", wallet, self.rng.randint(100, 50_000), "USD")
        too_large = self.rng.random() < 0.2
        amount = TOO_LARGE if too_large else self.rng.randint(100, 50_000)
        intent = "too_large" if too_large else "normal"
        return Op(self._key(), "withdrawal", "withdrawal", intent, wallet, amount, "USD")
