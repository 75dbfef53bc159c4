"""What the client sent and got, as written by the client host and read by the checks and the report.

One `Request` is one Idempotency-Key: a transfer (or a funding deposit) with every attempt
made for it. They become `chaos.history.Op`s for the bank test of `chaos.checks`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos.history import Answer, Op


@dataclass
class Attempt:
    sent: float  # wall clock (the hosts share the machine's clock)
    latency: float  # seconds until the answer, or until the attempt gave up
    status: int | None  # None: no HTTP answer (refused, reset, timed out)
    error: str | None = None  # the API's error code, or why there was no answer
    transfer_id: str | None = None  # the transfer's id, or a deposit's ledger entry id
    state: str | None = None  # the transfer's status in the answer
    reason: str | None = None
    replayed: bool = False

    def answer(self) -> Answer:
        return Answer(
            self.sent + self.latency, self.status, self.transfer_id, self.state, self.reason, self.error, self.replayed
        )

    @property
    def definitive(self) -> bool:
        return self.answer().definitive


@dataclass
class Request:
    key: str
    kind: str  # transfer | deposit
    payer: str  # the deposit's wallet for a deposit
    amount: int
    payer_shard: str
    payee: str | None = None
    payee_shard: str | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def final(self) -> Attempt | None:
        return next((a for a in reversed(self.attempts) if a.definitive), None)

    def touches(self, shard: str) -> bool:
        return shard in (self.payer_shard, self.payee_shard)

    def to_op(self) -> Op:
        via = "single" if self.kind == "transfer" else "deposit"
        return Op(
            self.key, self.kind, via, "normal", self.payer, self.amount, "USD", self.payee,
            answers=[a.answer() for a in self.attempts],
        )  # fmt: skip

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Request:
        attempts = [Attempt(**a) for a in raw.pop("attempts")]
        return cls(**raw, attempts=attempts)


@dataclass
class LoadResult:
    """One client run: its requests and the wall-clock times of its load."""

    label: str
    started: float
    ended: float  # no new request after this
    resolved: float  # every open request answered (or given up) by then
    threads: int
    requests: list[Request]

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> LoadResult:
        raw = json.loads(path.read_text())
        requests = [Request.from_dict(r) for r in raw.pop("requests")]
        return cls(**raw, requests=requests)
