"""A client thread: sends the workload's requests and retries each unanswered one with the same key.

A request whose outcome is open (no answer, a 5xx, 409 "in progress") is sent again with the
same Idempotency-Key and body, with backoff, until a definitive answer arrives or the run's
resolution deadline passes, as a careful API consumer would: it must never create a second
transfer nor move money twice.
"""

from __future__ import annotations

import random
import threading
import time

from chaos.api import ApiClient, NoAnswer, Response
from chaos.history import Answer, History, Op, Read
from chaos.timeline import Timeline
from chaos.workload import Batch, HoldStep, ReadStep, RefundStep, Resend, Single, Step, Workload, ops_of

SINGLE_TIMEOUT = 10.0  # seconds without an answer before the client gives up on one attempt
BATCH_TIMEOUT = 30.0


class Deadlines:
    """Shared by all clients: when to stop starting new requests, and when to stop retrying old ones."""

    def __init__(self) -> None:
        self.stop_new = threading.Event()
        self.give_up_at = float("inf")  # monotonic

    def end_load(self, resolve_seconds: float) -> None:
        self.give_up_at = time.monotonic() + resolve_seconds
        self.stop_new.set()

    @property
    def giving_up(self) -> bool:
        return time.monotonic() >= self.give_up_at


def transfer_answer(at: float, status: int, body: object, replayed: bool, error: str | None) -> Answer:
    if status in (201, 202) and isinstance(body, dict):
        return Answer(at, status, body.get("id"), body.get("status"), body.get("failure_reason"), replayed=replayed)
    return Answer(at, status, error=error)


class Client(threading.Thread):
    def __init__(
        self, *, index: int, api: ApiClient, workload: Workload, history: History, timeline: Timeline,
        deadlines: Deadlines,
    ) -> None:  # fmt: skip
        super().__init__(name=f"chaos-client-{index}", daemon=True)
        self.api = api
        self.workload = workload
        self.history = history
        self.timeline = timeline
        self.deadlines = deadlines
        self.jitter = random.Random(index)  # noqa: S311 - backoff jitter, not secrets
        self.transfer_ids: list[str] = []
        self.crashed: str | None = None

    def run(self) -> None:
        try:
            while not self.deadlines.stop_new.is_set():
                self.execute(self.workload.next_step())
        except Exception as exc:  # a harness bug must show up in the verdict, not vanish with the thread
            self.crashed = f"{type(exc).__name__}: {exc}"
            self.timeline.record("client", f"{self.name} crashed: {self.crashed}")
        finally:
            self.api.close()

    def execute(self, step: Step) -> None:
        if isinstance(step, ReadStep):
            self._read(step)
            return
        if isinstance(step, HoldStep):
            self._hold(step)
            return
        if isinstance(step, RefundStep):
            self._refund(step)
            return
        if isinstance(step, Resend):
            # Its operations are in the history already: only new answers are added.
            if step.switch and isinstance(step.step, Single):
                self._batch([step.step.op])
                return
            if step.switch and isinstance(step.step, Batch):
                for op in step.step.ops:
                    self._single(op, 0, self.api)
                return
            step = step.step
        else:
            for op in ops_of(step):
                self.history.add_op(op)
        if isinstance(step, Single):
            if step.twin:
                twin = threading.Thread(target=self._single, args=(step.op, step.wait, self.api.clone()))
                twin.start()
                self._single(step.op, step.wait, self.api)
                twin.join()
            else:
                self._single(step.op, step.wait, self.api)
        elif isinstance(step, Batch):
            self._batch(step.ops)
        else:
            self._movement(step)

    def _backoff(self, attempt: int) -> None:
        time.sleep(self.jitter.uniform(0.1, min(2.0, 0.2 * 2**attempt)))

    def _send(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        timeout: float,
        body: object = None,
        key: str | None = None,
        api: ApiClient | None = None,
    ) -> Response | str:
        """The response, or why there was none."""
        try:
            response = (api or self.api).request(method, path, body=body, key=key, timeout=timeout)
        except NoAnswer as exc:
            self.history.count_request(endpoint, None)
            return str(exc)
        self.history.count_request(endpoint, response.status)
        return response

    def _single(self, op: Op, wait: float, api: ApiClient) -> None:
        path = "/v1/transfers" + (f"?wait={wait:g}" if wait else "")
        timeout = SINGLE_TIMEOUT + wait
        attempt = 0
        while True:
            got = self._send(op.via, "POST", path, body=op.body(), key=op.key, timeout=timeout, api=api)
            now = self.timeline.now()
            if isinstance(got, str):
                answer = Answer(now, None, error=got)
            else:
                answer = transfer_answer(now, got.status, got.body, got.replayed, got.error_code)
            op.answers.append(answer)  # a twin thread may append to the same op: look only at our own answer
            if answer.object_id:
                self.transfer_ids.append(answer.object_id)
            if answer.definitive or self.deadlines.giving_up:
                if api is not self.api:
                    api.close()
                return
            self._backoff(attempt)
            attempt += 1

    def _batch(self, ops: list[Op]) -> None:
        pending = ops
        attempt = 0
        while pending:
            items = [{**op.body(), "idempotency_key": op.key} for op in pending]
            got = self._send("batch", "POST", "/v1/transfers/batch", body={"transfers": items}, timeout=BATCH_TIMEOUT)
            now = self.timeline.now()
            if isinstance(got, str):
                for op in pending:
                    op.answers.append(Answer(now, None, error=got))
            elif got.status != 200 or not isinstance(got.body, dict):
                for op in pending:
                    op.answers.append(Answer(now, got.status, error=got.error_code))
            else:
                for op, result in zip(pending, got.body["results"], strict=True):
                    error = (result.get("error") or {}).get("code")
                    answer = transfer_answer(
                        now, result["status"], result.get("transfer"), result["outcome"] == "replayed", error
                    )
                    op.answers.append(answer)
                    if answer.object_id:
                        self.transfer_ids.append(answer.object_id)
            # Only what is still open is sent again (same keys, same bodies).
            pending = [op for op in pending if not op.answers[-1].definitive]
            if not pending or self.deadlines.giving_up:
                return
            self._backoff(attempt)
            attempt += 1

    def _movement(self, op: Op) -> None:
        path = f"/v1/wallets/{op.wallet}/{op.kind}s"
        attempt = 0
        while True:
            got = self._send(op.kind, "POST", path, body=op.body(), key=op.key, timeout=SINGLE_TIMEOUT)
            now = self.timeline.now()
            if isinstance(got, str):
                op.answers.append(Answer(now, None, error=got))
            elif got.status == 201 and isinstance(got.body, dict):
                op.answers.append(Answer(now, 201, got.body.get("id"), replayed=got.replayed))
            else:
                op.answers.append(Answer(now, got.status, error=got.error_code))
            if op.answers[-1].definitive or self.deadlines.giving_up:
                return
            self._backoff(attempt)
            attempt += 1

    def _until_definitive(self, op: Op, method: str, path: str, answer_of: object) -> Answer:
        """Send `op` (same key, same body) until a definitive answer; returns the last answer."""
        attempt = 0
        while True:
            key = op.key if op.kind in ("hold", "refund") else None  # a capture or void takes none
            got = self._send(op.via, method, path, body=op.body(), key=key, timeout=SINGLE_TIMEOUT)
            now = self.timeline.now()
            answer = Answer(now, None, error=got) if isinstance(got, str) else answer_of(now, got)  # type: ignore[operator]
            op.answers.append(answer)
            if answer.definitive or self.deadlines.giving_up:
                return answer
            self._backoff(attempt)
            attempt += 1

    def _hold(self, step: HoldStep) -> None:
        """Create the hold, then capture part of it, void it or leave it to expire. A capture or
        void retried after a lost answer may find its own earlier attempt won: 409 with the state."""
        self.history.add_op(step.op)

        def created(now: float, got: Response) -> Answer:
            if got.status == 201 and isinstance(got.body, dict):
                body = got.body
                return Answer(now, 201, body["id"], body["status"], body.get("failure_reason"), replayed=got.replayed)
            return Answer(now, got.status, error=got.error_code)

        answer = self._until_definitive(step.op, "POST", "/v1/holds", created)
        if answer.status != 201 or answer.state != "held" or step.then == "expire":
            return
        hold_id = answer.object_id
        op = Op(step.op.key, step.then, step.then, "normal", step.op.wallet, step.part if step.then == "capture" else 0,
                "USD", payee=step.op.payee, hold_id=hold_id)  # fmt: skip
        self.history.add_op(op)

        def resolved(now: float, got: Response) -> Answer:
            if got.status == 200 and isinstance(got.body, dict):
                return Answer(now, 200, got.body.get("transfer_id"), got.body["status"], replayed=got.replayed)
            return Answer(now, got.status, error=got.error_code)

        self._until_definitive(op, "POST", f"/v1/holds/{hold_id}/{step.then}", resolved)

    def _refund(self, step: RefundStep) -> None:
        """Refund one of this client's transfers until a definitive answer: the refund's transfer,
        or a refusal (not completed, nothing left, too much, or a payee of another client's)."""
        if not self.transfer_ids:
            return
        # Which ids exist depends on timing: chosen by the jitter, never the workload's generator.
        step.op.refund_of = self.jitter.choice(self.transfer_ids)
        self.history.add_op(step.op)

        def refunded(now: float, got: Response) -> Answer:
            if got.status in (201, 202) and isinstance(got.body, dict):
                body = got.body
                return Answer(now, got.status, body["id"], body["status"], body.get("failure_reason"),
                              replayed=got.replayed)  # fmt: skip
            return Answer(now, got.status, error=got.error_code)

        self._until_definitive(step.op, "POST", f"/v1/transfers/{step.op.refund_of}/refunds", refunded)

    def _read(self, step: ReadStep) -> None:
        if step.what == "transfer":
            if not self.transfer_ids:
                return
            # Not the workload's generator: which ids exist depends on timing, and the
            # workload's draws must not, or a seed would no longer replay the same requests.
            target = self.jitter.choice(self.transfer_ids)
            got = self._send("read", "GET", f"/v1/transfers/{target}", timeout=SINGLE_TIMEOUT)
            if isinstance(got, Response) and got.status == 200:
                self.history.add_read(Read(self.timeline.now(), "transfer", target, got.body["status"]))
        else:
            assert step.target is not None  # noqa: S101 - the workload always names the wallet
            got = self._send("read", "GET", f"/v1/wallets/{step.target}/balance", timeout=SINGLE_TIMEOUT)
            if isinstance(got, Response) and got.status == 200:
                self.history.add_read(Read(self.timeline.now(), "balance", step.target, got.body["available"]))
