"""GET /v1/wallets/{id}/balance?at=: the running balance after the last entry at or before a time."""

from __future__ import annotations

from datetime import timedelta

import pytest

from apps.ledger.models import LedgerEntry
from apps.ledger.services import wallet_fund
from apps.transfers.api.serializers import iso_utc
from tests.factories import ALL_DATABASES, api_for, make_client, make_wallet

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def test_the_balance_at_every_entrys_time_is_its_running_balance() -> None:
    owner, key = make_client()
    api = api_for(key)
    wallet = make_wallet(owner, shard="shard_01")
    for n in range(1, 38):
        wallet_fund(wallet_id=wallet.id, amount_minor=n, reference=f"dep-{n}")
    entries = list(LedgerEntry.objects.using("shard_01").filter(wallet_id=wallet.id).order_by("seq"))
    for entry in entries:
        shown = api.get(f"/v1/wallets/{wallet.id}/balance", {"at": iso_utc(entry.created_at)}).json()
        # Entries stamped in the same microsecond: the last of them counts.
        last = max(e.seq for e in entries if e.created_at <= entry.created_at)
        assert (shown["entry_seq"], shown["available"]) == (last, entries[last - 1].balance_after_minor)
    before = api.get(f"/v1/wallets/{wallet.id}/balance", {"at": iso_utc(entries[0].created_at - timedelta(seconds=1))})
    assert (before.json()["available"], before.json()["entry_seq"], before.json()["entry_id"]) == (0, 0, None)
    later = api.get(f"/v1/wallets/{wallet.id}/balance", {"at": "2999-01-01T00:00:00Z"}).json()
    assert (later["available"], later["entry_seq"]) == (sum(range(1, 38)), 37)
    assert api.get(f"/v1/wallets/{wallet.id}/balance").json()["available"] == sum(range(1, 38))


def test_far_times_and_offsets_postgresql_does_not_take_are_answered() -> None:
    owner, key = make_client()
    wallet = make_wallet(owner, funded=100)
    api = api_for(key)
    for at, available in [("1152-12-18T01:06:17+21:18", 0), ("9999-12-31T23:59:59Z", 100), ("0001-01-01T00:00:00Z", 0)]:
        answer = api.get(f"/v1/wallets/{wallet.id}/balance", {"at": at})
        assert (answer.status_code, answer.json()["available"]) == (200, available), at


@pytest.mark.parametrize(
    "at", ["yesterday", "2026-12-06T00:00:00", "2026-13-01T00:00:00Z", "0001-01-01T00:00:00+01:00"]
)
def test_an_unreadable_time_is_refused(at) -> None:
    owner, key = make_client()
    wallet = make_wallet(owner)
    answer = api_for(key).get(f"/v1/wallets/{wallet.id}/balance", {"at": at})
    assert (answer.status_code, answer.json()["error"]["param"]) == (400, "at")


def test_another_clients_wallet_is_not_found_at_any_time() -> None:
    owner, _ = make_client("owner")
    _, other_key = make_client("other")
    wallet = make_wallet(owner, funded=100)
    answer = api_for(other_key).get(f"/v1/wallets/{wallet.id}/balance", {"at": "2999-01-01T00:00:00Z"})
    assert answer.status_code == 404
