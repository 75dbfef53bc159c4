from collections.abc import Iterator

import pytest

from apps.accounts import selectors
from apps.accounts.models import ApiClient
from tests.factories import ALL_DATABASES, api_for, make_client

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


class Clock:
    """Stands in for the `time` module in the key cache: the test decides when time passes."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    clock = Clock()
    monkeypatch.setattr(selectors, "time", clock)
    selectors.forget_cached_keys()
    yield clock
    selectors.forget_cached_keys()


def test_a_revoked_key_stops_working_once_the_cache_expires(clock: Clock) -> None:
    client, key = make_client()
    assert api_for(key).get("/v1/wallets").status_code == 200  # cached from now on
    ApiClient.objects.using("default").filter(id=client.id).update(is_active=False)

    clock.now += selectors.KEY_CACHE_SECONDS - 0.5
    assert api_for(key).get("/v1/wallets").status_code == 200  # within the documented window

    clock.now += 1.0
    response = api_for(key).get("/v1/wallets")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"
    clock.now += selectors.KEY_CACHE_SECONDS
    assert api_for(key).get("/v1/wallets").status_code == 401  # still refused once the short refusal cache expires


def test_an_unknown_key_is_looked_up_once_then_remembered_briefly(clock: Clock) -> None:
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connections["default"]) as queries:
        for _ in range(20):
            assert api_for("sk_not-a-key").get("/v1/wallets").status_code == 401
    assert len([q for q in queries if "accounts_apiclient" in q["sql"]]) == 1
    clock.now += selectors.UNKNOWN_KEY_CACHE_SECONDS + 0.1
    with CaptureQueriesContext(connections["default"]) as queries:
        assert api_for("sk_not-a-key").get("/v1/wallets").status_code == 401
    assert len([q for q in queries if "accounts_apiclient" in q["sql"]]) == 1


def test_an_active_key_keeps_working_after_its_cache_entry_expires(clock: Clock) -> None:
    _, key = make_client()
    assert api_for(key).get("/v1/wallets").status_code == 200
    clock.now += selectors.KEY_CACHE_SECONDS + 1
    assert api_for(key).get("/v1/wallets").status_code == 200
