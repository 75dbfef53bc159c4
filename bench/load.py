"""Load through the real HTTP API: closed loop (fixed concurrency) or open loop (fixed rate)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
from tqdm import tqdm


@dataclass
class Sent:
    """One transfer the API accepted (or refused), with client-side timings."""

    transfer_id: str | None
    submitted: float  # wall clock, to compare with the database's terminal time
    http_seconds: float
    http_status: int
    error_code: str | None = None
    wallets: tuple[str, ...] = ()  # payer and payee of a single request
    server_ms: float | None = None  # the API's own time (its Server-Timing header), queueing excluded


def server_ms(response: aiohttp.ClientResponse) -> float | None:
    """`app;dur=<ms>` from the Server-Timing header, if the server sent it."""
    for part in response.headers.get("Server-Timing", "").split(";"):
        if part.strip().startswith("dur="):
            return float(part.strip()[4:])
    return None


@dataclass
class PhaseLoad:
    name: str
    started: float
    ended: float = 0.0
    requests: int = 0
    sent: list[Sent] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)  # per batch request (singles carry theirs)

    def api_times_ms(self) -> list[float]:
        """The API's own time per request, as its Server-Timing header said."""
        own = [s.server_ms for s in self.sent if s.server_ms is not None]
        return own + self.server_ms

    @property
    def accepted(self) -> list[Sent]:
        return [s for s in self.sent if s.transfer_id is not None]


@dataclass
class Workload:
    """Which wallets pay which: random pairs, with a share of transfers to one hot payee
    (`hot_share`, the first wallet) and a share paid by one hot payer (`hot_payer_share`, the second)."""

    wallet_ids: list[str]
    hot_share: float
    amount: int = 1
    rng: random.Random = field(default_factory=lambda: random.Random(7))  # noqa: S311 - load, not secrets
    hot_payer_share: float = 0.0

    def body(self) -> dict[str, object]:
        hot_payer = self.rng.random() < self.hot_payer_share
        payer = self.wallet_ids[1] if hot_payer else self.rng.choice(self.wallet_ids)
        payee = self.wallet_ids[0] if self.rng.random() < self.hot_share else self.rng.choice(self.wallet_ids)
        while payee == payer:
            if hot_payer:
                payee = self.rng.choice(self.wallet_ids)
            else:
                payer = self.rng.choice(self.wallet_ids)
        return {"from": payer, "to": payee, "amount_minor": self.amount, "currency": "USD"}


class Client:
    def __init__(self, base_url: str, api_key: str, connections: int) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.connections = connections

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=self.connections, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def single(self, workload: Workload, phase: PhaseLoad) -> None:
        body = workload.body()
        headers = {**self.headers, "Idempotency-Key": str(uuid.uuid4())}
        submitted, started = time.time(), time.perf_counter()
        async with self.session.post(f"{self.base_url}/v1/transfers", json=body, headers=headers) as response:
            payload = await response.json()
        elapsed = time.perf_counter() - started
        phase.requests += 1
        pair = (str(body["from"]), str(body["to"]))
        app = server_ms(response)
        if response.status in (201, 202):
            phase.sent.append(Sent(payload["id"], submitted, elapsed, response.status, wallets=pair, server_ms=app))
        else:
            code = payload.get("error", {}).get("code")
            phase.sent.append(Sent(None, submitted, elapsed, response.status, code, wallets=pair, server_ms=app))

    async def capture(self, workload: Workload, phase: PhaseLoad) -> None:
        """A hold, then its capture whole: the capture's transfer is what the phase counts (two requests each)."""
        body = workload.body()
        headers = {**self.headers, "Idempotency-Key": str(uuid.uuid4())}
        submitted, started = time.time(), time.perf_counter()
        pair = (str(body["from"]), str(body["to"]))
        async with self.session.post(f"{self.base_url}/v1/holds", json=body, headers=headers) as response:
            hold = await response.json()
            held_ms = server_ms(response) or 0.0
        phase.requests += 1
        if response.status != 201 or hold.get("status") != "held":
            code = hold.get("failure_reason") or hold.get("error", {}).get("code")
            elapsed = time.perf_counter() - started
            phase.sent.append(Sent(None, submitted, elapsed, response.status, code, wallets=pair, server_ms=held_ms))
            return
        url = f"{self.base_url}/v1/holds/{hold['id']}/capture"
        async with self.session.post(url, json={}, headers=self.headers) as response:
            captured = await response.json()
            app = held_ms + (server_ms(response) or 0.0)
        elapsed = time.perf_counter() - started
        phase.requests += 1
        if response.status == 200:
            phase.sent.append(Sent(captured["transfer_id"], submitted, elapsed, 200, wallets=pair, server_ms=app))
        else:
            code = captured.get("error", {}).get("code")
            phase.sent.append(Sent(None, submitted, elapsed, response.status, code, wallets=pair, server_ms=app))

    async def batch(self, workload: Workload, phase: PhaseLoad, size: int) -> None:
        items = [{**workload.body(), "idempotency_key": str(uuid.uuid4())} for _ in range(size)]
        submitted, started = time.time(), time.perf_counter()
        async with self.session.post(
            f"{self.base_url}/v1/transfers/batch", json={"transfers": items}, headers=self.headers
        ) as response:
            payload = await response.json()
        elapsed = time.perf_counter() - started
        phase.requests += 1
        phase.server_ms.append(server_ms(response) or 0.0)
        if response.status != 200:
            code = payload.get("error", {}).get("code")
            phase.sent.extend(Sent(None, submitted, elapsed, response.status, code) for _ in items)
            return
        for result in payload["results"]:
            if result["outcome"] in ("accepted", "replayed"):
                phase.sent.append(Sent(result["transfer"]["id"], submitted, elapsed, result["status"]))
            else:
                phase.sent.append(Sent(None, submitted, elapsed, result["status"], result["error"]["code"]))


async def closed_loop(
    client: Client,
    workload: Workload,
    *,
    name: str,
    seconds: float,
    concurrency: int,
    batch_size: int = 0,
    capture: bool = False,
) -> PhaseLoad:
    """`concurrency` clients, each sending its next request as soon as the previous one answered
    (a batch of `batch_size`, a hold and its `capture`, or a single transfer)."""
    phase = PhaseLoad(name=name, started=time.time())
    deadline = time.perf_counter() + seconds
    progress = tqdm(total=int(seconds), desc=name, unit="s", leave=False)

    async def user() -> None:
        while time.perf_counter() < deadline:
            if batch_size:
                await client.batch(workload, phase, batch_size)
            elif capture:
                await client.capture(workload, phase)
            else:
                await client.single(workload, phase)

    async def ticker() -> None:
        while time.perf_counter() < deadline:
            await asyncio.sleep(1)
            progress.update(1)

    await asyncio.gather(ticker(), *(user() for _ in range(concurrency)))
    progress.close()
    phase.ended = time.time()
    return phase


async def open_loop(client: Client, workload: Workload, *, name: str, seconds: float, rate: float) -> PhaseLoad:
    """Requests started at a fixed rate whatever the answers (at most 512 in flight)."""
    phase = PhaseLoad(name=name, started=time.time())
    in_flight = asyncio.Semaphore(512)
    start = time.perf_counter()
    total = int(seconds * rate)
    tasks = []

    async def one() -> None:
        async with in_flight:
            await client.single(workload, phase)

    for i in tqdm(range(total), desc=name, unit="req", leave=False):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    phase.ended = time.time()
    return phase
