import pytest

from apps.accounts import selectors
from apps.accounts.models import ApiClient
from tests.factories import ALL_DATABASES, api_for, make_client

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def test_a_revoked_key_stops_working_once_the_cache_expires(monkeypatch) -> None:
    client, key = make_client()
    assert api_for(key).get("/v1/wallets").status_code == 200
    ApiClient.objects.using("default").filter(id=client.id).update(is_active=False)
    monkeypatch.setattr(selectors, "KEY_CACHE_SECONDS", 0.0)
    selectors.forget_cached_keys()
    response = api_for(key).get("/v1/wallets")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"
