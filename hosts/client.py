"""The client host's load generator: HTTP to the app host only, never a database, Redis or a file of theirs.

    python -m hosts.client setup --plan PLAN --out WALLETS      wallets on every shard, funded
    python -m hosts.client load --plan PLAN --wallets WALLETS --label a --seconds 30 --out RESULT

`setup` creates wallets through the API until every shard has enough (a wallet's id carries
its bucket, and the plan says which shard owns each bucket) and funds each with a deposit.
`load` runs users, a thread each, spread evenly over the shards (a user pays from wallets
on its shard to any wallet): each sends one `POST /v1/transfers` at a time with an
Idempotency-Key, and retries a request whose outcome is open (no answer, a 5xx, 409 in
progress) with the same key and body, with backoff. After `--seconds` no new transfer
starts; open ones are retried until answered or `--resolve` seconds pass. Every attempt is recorded (when, how
long, status, error code, the transfer's state) in the JSON result for the orchestrator.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.sharding.ids import bucket_of
from chaos.api import ApiClient, NoAnswer
from hosts.layout import API_PORT
from hosts.layout import APP as APP_HOST
from hosts.records import Attempt, LoadResult, Request

APP_ADDRESS = APP_HOST.address

REQUEST_TIMEOUT = 15.0  # seconds an attempt waits for its answer
PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class Plan:
    """What the orchestrator tells the client: where the API is, its key, who owns which bucket."""

    host: str
    port: int
    key: str
    owners: list[str]  # the shard of each bucket
    per_shard: int
    deposit: int

    @classmethod
    def read(cls, path: Path) -> Plan:
        return cls(**json.loads(path.read_text()))

    def api(self) -> ApiClient:
        return ApiClient(self.host, self.port, self.key)

    def shard_of(self, wallet: str) -> str:
        return self.owners[bucket_of(uuid.UUID(wallet))]


def attempt(api: ApiClient, method: str, path: str, body: object, key: str | None) -> tuple[Attempt, Any]:
    sent, started = time.time(), time.perf_counter()
    try:
        response = api.request(method, path, body=body, key=key, timeout=REQUEST_TIMEOUT)
    except NoAnswer as exc:
        return Attempt(sent, time.perf_counter() - started, None, error=str(exc)[:200]), None
    got = Attempt(sent, time.perf_counter() - started, response.status, response.error_code)
    got.replayed = response.replayed
    body_out = response.body if isinstance(response.body, dict) else {}
    if response.status in (200, 201, 202):
        got.transfer_id = body_out.get("id")
        got.state = body_out.get("status")
        got.reason = body_out.get("failure_reason")
    return got, body_out


def until_definitive(api: ApiClient, request: Request, path: str, body: object, give_up_at: float) -> None:
    """Send one request (same key, same body) until it gets a definitive answer: for the set-up."""
    tries = 0
    while time.monotonic() < give_up_at:
        got, _ = attempt(api, "POST", path, body, request.key)
        request.attempts.append(got)
        if got.definitive:
            return
        tries += 1
        time.sleep(min(2.0, 0.2 * 2**tries))


def list_wallets(api: ApiClient) -> list[str]:
    found: list[str] = []
    cursor = ""
    while True:
        response = api.request("GET", f"/v1/wallets?limit=100{'&cursor=' + cursor if cursor else ''}")
        if response.status != 200:
            raise SystemExit(f"setup: listing the wallets answered {response.status} {response.error_code}")
        found += [w["id"] for w in response.body["data"]]
        cursor = response.body.get("next_cursor") or ""
        if not cursor:
            return found


def setup(plan: Plan, out: Path) -> None:
    api = plan.api()
    give_up_at = time.monotonic() + 120
    wallets: dict[str, str] = {}
    counts: Counter[str] = Counter()
    while min(counts[s] for s in set(plan.owners)) < plan.per_shard:
        if time.monotonic() > give_up_at:
            raise SystemExit(f"setup: could not create the wallets in time ({dict(counts)})")
        got, body = attempt(api, "POST", "/v1/wallets", {"currency": "USD"}, None)
        if got.status == 201:
            wallets[body["id"]] = plan.shard_of(body["id"])
            counts[wallets[body["id"]]] += 1
        else:
            time.sleep(0.5)
    # A creation whose answer was lost still made a wallet: the run's wallets are all the client's.
    wallets = {w: plan.shard_of(w) for w in list_wallets(api)}
    counts = Counter(wallets.values())
    deposits = []
    for i, (wallet, shard) in enumerate(sorted(wallets.items())):
        request = Request(f"hosts-fund-{i}", "deposit", wallet, plan.deposit, shard)
        until_definitive(api, request, f"/v1/wallets/{wallet}/deposits", {"amount_minor": plan.deposit}, give_up_at)
        if request.final is None or request.final.status != 201:
            raise SystemExit(f"setup: deposit into {wallet} was not accepted: {request.attempts[-1]}")
        deposits.append(request)
    api.close()
    now = time.time()
    LoadResult("setup", now, now, now, 1, deposits).write(out)
    print(f"setup: {len(wallets)} wallets ({dict(sorted(counts.items()))}), each funded with {plan.deposit}")


class Load:
    """Users, one thread each, paying from wallets on one shard (users spread evenly over the shards).

    A user sends one transfer at a time and retries an open one (same key, same body) with
    backoff until it gets a definitive answer, as a careful API consumer does: while a shard
    is unreachable its users wait, and the others' transfers must not.
    """

    def __init__(self, plan: Plan, wallets: dict[str, str], label: str, threads: int, seed: int) -> None:
        self.plan = plan
        self.wallets = sorted(wallets)
        self.shard = wallets
        self.shards = sorted(set(wallets.values()))
        self.label = label
        self.threads = threads
        self.seed = seed
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.retrying = 0
        self.stop_new = threading.Event()
        self.give_up_at = float("inf")
        self.statuses: Counter[str] = Counter()

    def _user(self, index: int) -> None:
        rng = random.Random(f"{self.seed}:{index}")  # noqa: S311 - a workload, not secrets
        home = self.shards[index % len(self.shards)]
        payers = [w for w in self.wallets if self.shard[w] == home]
        api = self.plan.api()
        count = 0
        try:
            while not self.stop_new.is_set():
                count += 1
                payer = rng.choice(payers)
                payee = rng.choice([w for w in self.wallets if w != payer])
                request = Request(
                    f"hosts-{self.label}-{index}-{count}", "transfer", payer, rng.randint(1, 1000), home,
                    payee, self.shard[payee],
                )  # fmt: skip
                with self.lock:
                    self.requests.append(request)
                self._until_answered(api, request, rng)
        finally:
            api.close()

    def _until_answered(self, api: ApiClient, request: Request, rng: random.Random) -> None:
        body = {"from": request.payer, "to": request.payee, "amount_minor": request.amount, "currency": "USD"}
        tries = 0
        while True:
            got, _ = attempt(api, "POST", "/v1/transfers", body, request.key)
            request.attempts.append(got)
            with self.lock:
                self.statuses[str(got.status) if got.status else "no answer"] += 1
            if got.definitive or time.monotonic() >= self.give_up_at:
                break
            if tries == 0:
                with self.lock:
                    self.retrying += 1
            # Backoff with jitter from 0.25 s up to 4 s (the service says Retry-After: 1), on a new
            # connection: the server closes an idle keep-alive one after a couple of seconds.
            api.close()
            time.sleep(min(4.0, 0.25 * 2**tries) * rng.uniform(0.5, 1.0))
            tries += 1
        if tries:
            with self.lock:
                self.retrying -= 1

    def run(self, seconds: float, resolve: float) -> LoadResult:
        started = time.time()
        users = [threading.Thread(target=self._user, args=(i,), daemon=True) for i in range(self.threads)]
        for user in users:
            user.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(PROGRESS_SECONDS, max(0.0, deadline - time.monotonic())))
            self._progress()
        self.give_up_at = time.monotonic() + resolve
        self.stop_new.set()
        ended = time.time()
        for user in users:
            user.join(timeout=max(0.0, self.give_up_at + REQUEST_TIMEOUT - time.monotonic()))
        resolved = time.time()
        self._progress()
        with self.lock:
            return LoadResult(self.label, started, ended, resolved, self.threads, list(self.requests))

    def _progress(self) -> None:
        with self.lock:
            statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
            retrying, total = self.retrying, len(self.requests)
        print(f"  client {self.label}: {total} transfers; answers {statuses}; {retrying} users retrying", flush=True)


def wait_ready(timeout: float) -> bool:
    """Until the API answers GET /health/ready with 200 (every database and Redis answer, migrated)."""
    api = ApiClient(APP_ADDRESS, API_PORT, "")
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = api.request("GET", "/health/ready", timeout=5)
        except NoAnswer as exc:
            last = str(exc)
        else:
            if response.status == 200:
                return True
            last = f"{response.status} {response.body}"
        time.sleep(0.5)
    print(f"ready: the API at {APP_ADDRESS}:{API_PORT} is not ready after {timeout:g} s: {last}", flush=True)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m hosts.client", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["ready", "setup", "load"])
    parser.add_argument("--plan", type=Path, help="the orchestrator's instructions (setup, load)")
    parser.add_argument("--out", type=Path, help="where to write the result (setup, load)")
    parser.add_argument("--wallets", type=Path, help="the set-up's result (load)")
    parser.add_argument("--label", default="load")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--users", type=int, default=15, help="concurrent users, spread over the shards")
    parser.add_argument("--resolve", type=float, default=120, help="seconds to get the open requests answered")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for readiness (ready)")
    args = parser.parse_args()
    if args.command == "ready":
        sys.exit(0 if wait_ready(args.timeout) else 1)
    if args.plan is None or args.out is None:
        parser.error(f"{args.command} needs --plan and --out")
    plan = Plan.read(args.plan)
    if args.command == "setup":
        setup(plan, args.out)
        return
    if args.wallets is None:
        parser.error("load needs --wallets")
    funded = LoadResult.read(args.wallets)
    wallets = {r.payer: r.payer_shard for r in funded.requests}
    Load(plan, wallets, args.label, args.users, args.seed).run(args.seconds, args.resolve).write(args.out)


if __name__ == "__main__":
    main()
