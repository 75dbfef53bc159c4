import uuid

import pytest
from django.db import connections

from apps.accounts.models import ApiClient
from apps.ledger.models import LedgerEntry, Wallet
from apps.ledger.services import wallet_create
from apps.sharding.ids import new_id
from apps.sharding.router import NoShardSelected, ShardRouter
from apps.sharding.routing import alias_for_id, shard_aliases, shard_map, use_shard
from tests.factories import ALL_DATABASES, bucket_on, make_client, raw_query

router = ShardRouter()


@pytest.mark.parametrize("model", [Wallet, LedgerEntry])
def test_sharded_model_without_a_shard_raises(model: type) -> None:
    with pytest.raises(NoShardSelected, match="using="):
        router.db_for_read(model)
    with pytest.raises(NoShardSelected):
        router.db_for_write(model)


def test_sharded_model_goes_to_the_shard_in_scope() -> None:
    with use_shard("shard_01"):
        assert router.db_for_read(Wallet) == "shard_01"
        assert router.db_for_write(LedgerEntry) == "shard_01"
    with pytest.raises(NoShardSelected):
        router.db_for_read(Wallet)


def test_instance_hint_wins_over_scope() -> None:
    wallet = Wallet(id=new_id(0))
    wallet._state.db = "shard_00"
    with use_shard("shard_01"):
        assert router.db_for_read(LedgerEntry, instance=wallet) == "shard_00"


def test_unknown_scope_is_refused() -> None:
    with pytest.raises(KeyError), use_shard("shard_99"):
        pass


def test_control_models_go_to_default() -> None:
    assert router.db_for_read(ApiClient) == "default"
    with use_shard("shard_00"):
        assert router.db_for_write(ApiClient) == "default"


@pytest.mark.parametrize("alias", ["shard_00", "shard_01"])
def test_sharded_apps_migrate_on_every_shard_only(alias: str) -> None:
    assert router.allow_migrate(alias, "ledger") is True
    assert router.allow_migrate("default", "ledger") is False
    assert router.allow_migrate(alias, "accounts") is False
    assert router.allow_migrate(alias, "auth") is False
    assert router.allow_migrate("default", "auth") is True


def test_relations_only_within_one_database() -> None:
    a, b = Wallet(id=new_id(0)), Wallet(id=new_id(600))
    a._state.db, b._state.db = "shard_00", "shard_01"
    assert router.allow_relation(a, b) is False
    b._state.db = "shard_00"
    assert router.allow_relation(a, b) is True


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_unqualified_orm_query_raises_instead_of_reading_the_wrong_database() -> None:
    with pytest.raises(NoShardSelected):
        Wallet.objects.count()


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_a_wallet_on_each_shard_lands_on_that_shard_only() -> None:
    owner, _key = make_client()
    for alias in shard_aliases():
        wallet = wallet_create(owner_id=owner.id, currency="EUR", bucket=bucket_on(alias))
        assert alias_for_id(wallet.id) == alias
        for other in shard_aliases():
            rows = raw_query(other, "SELECT owner_id, currency FROM ledger_wallet WHERE id = %s", [wallet.id])
            assert rows == ([(owner.id, "EUR")] if other == alias else [])


@pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)
def test_shards_hold_only_sharded_tables_and_control_holds_none() -> None:
    tables_sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    sharded = {"ledger_entry", "ledger_wallet", "ledger_movement_key", "transfers_transfer", "transfers_event",
               "transfers_idempotency", "transfers_payee_credit", "holds_hold", "refunds_refund",
               "events_event"}  # fmt: skip
    fence_tables = {"sharding_bucket_owner", "sharding_shard_identity", "sharding_move_marker"}
    # The outbox dispatcher's position and the audit stores' slot registry on this shard.
    per_shard = {"events_dispatch_cursor", "shardwallet_cdc_slot"}
    for alias in shard_aliases():
        tables = {t for (t,) in raw_query(alias, tables_sql)}
        assert tables == {"django_migrations", *sharded, *fence_tables, *per_shard}
    control_tables = {t for (t,) in raw_query("default", tables_sql)}
    assert "accounts_apiclient" in control_tables
    assert {"sharding_map_state", "sharding_bucket_assignment", "sharding_server", "sharding_move"} <= control_tables
    assert not (sharded | fence_tables) & control_tables


def test_random_buckets_spread_over_all_shards() -> None:
    ids = [new_id(b) for b in range(shard_map().bucket_count)]
    assert {alias_for_id(i) for i in ids} == set(shard_aliases())
    assert all(isinstance(i, uuid.UUID) for i in ids)
    assert set(connections.databases) == {"default", *shard_aliases()}


def test_shard_of_command_prints_bucket_and_shard() -> None:
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    wallet_id = new_id(bucket_on("shard_01"))
    out = StringIO()
    call_command("shard_of", str(wallet_id), stdout=out)
    assert out.getvalue().split() == [str(wallet_id), "bucket", str(bucket_on("shard_01")), "shard_01"]
    with pytest.raises(CommandError):
        call_command("shard_of", "nope", stdout=StringIO())
