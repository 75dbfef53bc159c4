"""Per-key rate limits: a token bucket per client in Redis, 429 with Retry-After, then recovery."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from django.conf import settings

from apps.accounts.models import ApiClient
from apps.accounts.throttling import _limiter, chunk_of
from tests.contract.schema import CheckedAPIClient
from tests.factories import ALL_DATABASES, make_client, make_wallet
from tests.workers import flush_redis

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def limited_client(rate: int, burst: int) -> tuple[ApiClient, CheckedAPIClient]:
    client, key = make_client()
    ApiClient.objects.using("default").filter(id=client.id).update(rate_limit_per_second=rate, rate_limit_burst=burst)
    api = CheckedAPIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client, api


@pytest.fixture(autouse=True)
def empty_buckets(devstack: Any) -> None:
    flush_redis()  # client ids are reused across tests' databases: start every bucket full
    _limiter.forget()


def bucket_tokens(client: ApiClient) -> float:
    return float(redis.Redis.from_url(settings.REDIS_URL).hget(f"shardwallet:rate:{client.id}", "tokens"))


def test_a_process_takes_tokens_a_chunk_at_a_time_from_a_large_bucket() -> None:
    """One Redis call per chunk (20 tokens of a 2,000 burst), not per request."""
    client, api = limited_client(rate=1, burst=2000)
    assert chunk_of(2000) == 20
    assert all(api.get("/v1/wallets").status_code == 200 for _ in range(20))
    assert 1980 <= bucket_tokens(client) < 1981  # one chunk taken, spent locally
    assert api.get("/v1/wallets").status_code == 200
    assert 1960 <= bucket_tokens(client) < 1962  # the next chunk
    assert chunk_of(2) == chunk_of(150) == 1  # small buckets: one token a request, exactly


def test_a_key_over_its_limit_gets_429_with_retry_after_and_recovers() -> None:
    client, api = limited_client(rate=1, burst=2)
    wallet = make_wallet(client)
    assert [api.get(f"/v1/wallets/{wallet.id}").status_code for _ in range(2)] == [200, 200]
    refused = api.get(f"/v1/wallets/{wallet.id}")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused["Retry-After"] == "1"
    # A refused write changes nothing.
    deposit = api.post(f"/v1/wallets/{wallet.id}/deposits", {"amount_minor": 5}, format="json",
                       HTTP_IDEMPOTENCY_KEY="d1")  # fmt: skip
    assert deposit.status_code == 429
    wallet.refresh_from_db()
    assert wallet.balance_minor == 0
    time.sleep(1.1)
    assert api.get(f"/v1/wallets/{wallet.id}").status_code == 200


def test_each_key_has_its_own_bucket_and_the_default_applies_without_its_own(settings: Any) -> None:
    _, noisy = limited_client(rate=1, burst=1)
    _, quiet_key = make_client("quiet")
    quiet = CheckedAPIClient()
    quiet.credentials(HTTP_AUTHORIZATION=f"Bearer {quiet_key}")
    assert noisy.get("/v1/wallets").status_code == 200
    assert noisy.get("/v1/wallets").status_code == 429
    assert quiet.get("/v1/wallets").status_code == 200
    settings.API_RATE_LIMIT_PER_SECOND, settings.API_RATE_LIMIT_BURST = 1, 1  # the deployment's default
    time.sleep(1.05)  # the tokens this process took under the old default last a second at most
    assert [quiet.get("/v1/wallets").status_code for _ in range(2)] == [200, 429]


def test_rate_zero_means_no_limit_and_redis_down_lets_requests_through(settings: Any) -> None:
    _, unlimited = limited_client(rate=0, burst=1)
    assert all(unlimited.get("/v1/wallets").status_code == 200 for _ in range(5))
    _, limited = limited_client(rate=1, burst=1)
    assert limited.get("/v1/wallets").status_code == 200
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    try:
        # Payments must not stop with Redis: the limit is not enforced while it is unreachable.
        assert [limited.get("/v1/wallets").status_code for _ in range(3)] == [200, 200, 200]
    finally:
        _limiter.skip_until = 0.0
        _limiter.forget()
