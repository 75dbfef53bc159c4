"""One reading of the shard map per operation: a map refreshed in the middle changes nothing it decided."""

from __future__ import annotations

import time
from typing import Any

import pytest

from apps.sharding.ids import bucket_of
from apps.sharding.mapstore import live_map
from apps.sharding.routing import alias_for_id, one_map, refresh_shard_map, shard_map
from apps.sharding.shardmap import ShardMap
from apps.transfers import creation
from apps.transfers.checks import check_ledger
from apps.transfers.saga import transfer_advance
from tests.factories import ALL_DATABASES, create_transfer, make_client
from tests.factories import wallet_balance as balance
from tests.sharding.moving import wallet_in_bucket

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def _with_owner(current: ShardMap, bucket: int, alias: str) -> ShardMap:
    owners = [current.alias_for_bucket(b) for b in range(current.bucket_count)]
    owners[bucket] = alias
    return current.with_owners(dict(current.shards), owners, current.epoch)


def _route_by(chosen: ShardMap) -> None:
    live_map._map = chosen
    live_map._checked_at = time.monotonic() + 3600  # no background refresh meanwhile


@pytest.fixture(autouse=True)
def forget_map() -> Any:
    yield
    live_map.forget()


def test_inside_one_operation_a_refreshed_map_is_not_seen_until_the_operation_asks() -> None:
    true_map = refresh_shard_map()
    stale = _with_owner(true_map, 5, "shard_01")
    _route_by(stale)
    with one_map():
        _route_by(true_map)  # the background refresh lands in the middle
        assert shard_map().alias_for_bucket(5) == "shard_01"  # still the operation's reading
        with one_map():
            assert shard_map().alias_for_bucket(5) == "shard_01"  # nested: the same
        assert refresh_shard_map().alias_for_bucket(5) == "shard_00"  # asked for: followed
        assert shard_map().alias_for_bucket(5) == "shard_00"
    assert shard_map().alias_for_bucket(5) == "shard_00"


def test_a_map_flipped_between_locking_the_wallets_and_deciding_the_credit_changes_nothing(monkeypatch: Any) -> None:
    owner, _ = make_client()
    payer = wallet_in_bucket(owner, 10, funded=1000)  # both on shard_00, in buckets of their own
    payee = wallet_in_bucket(owner, 20)
    true_map = refresh_shard_map()
    # A map a second old that still puts the payee's bucket on shard_01 (it moved since).
    _route_by(_with_owner(true_map, bucket_of(payee.id), "shard_01"))
    locking = creation.wallets_to_lock

    def lock_then_flip(*args: Any, **kwargs: Any) -> Any:
        found = locking(*args, **kwargs)
        _route_by(true_map)  # the refresh lands between the lock and the same-shard decision
        return found

    monkeypatch.setattr(creation, "wallets_to_lock", lock_then_flip)
    transfer = create_transfer(owner, payer, payee.id, 250)
    monkeypatch.undo()
    # Decided from one reading: a cross-shard transfer (debited), not a payee "not found" on its own shard.
    assert transfer.status == "debited", transfer.failure_reason
    assert alias_for_id(payee.id) == "shard_00"
    assert transfer_advance(transfer.id).status == "completed"
    assert (balance(payer.id), balance(payee.id)) == (750, 250)
    assert check_ledger().violations == []


def test_a_request_never_waits_for_another_threads_read_of_an_unreachable_control_database(monkeypatch: Any) -> None:
    """With the control database unreachable, a read of the map takes its connect timeout; the
    other threads route by the map in hand meanwhile instead of queueing behind it."""
    import threading

    from apps.sharding import mapstore

    in_hand = refresh_shard_map()
    reading, release = threading.Event(), threading.Event()

    def slow_epoch() -> int:
        reading.set()
        release.wait(10)  # a connect timeout to a host that does not answer
        raise mapstore.DatabaseError("connection timeout expired")

    monkeypatch.setattr(mapstore, "read_epoch", slow_epoch)
    live_map._checked_at = float("-inf")
    reader = threading.Thread(target=live_map.get)
    reader.start()
    try:
        assert reading.wait(5)
        live_map._checked_at = float("-inf")  # due again for this thread too
        started = time.monotonic()
        assert shard_map() is in_hand
        assert time.monotonic() - started < 1
    finally:
        release.set()
        reader.join(10)
