"""The admin over all shards: changelists, pagination, search routing, detail pages, read-only."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.db import connections
from django.test.utils import CaptureQueriesContext

from apps.ledger.models import Wallet
from apps.sharding.routing import alias_for_id
from apps.transfers import saga
from tests.factories import ALL_DATABASES, create_transfer, make_client, make_wallet, wallet_balance
from tests.operators.helpers import cross_shard_pair, logged_in, make_staff

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


@pytest.fixture
def viewer():
    return logged_in(make_staff("vera", "viewers"))


def listed_ids(response) -> list[str]:
    assert response.status_code == 200, response.content[:500]
    return [str(row.pk) for row in response.context["cl"].result_list]


def test_wallet_changelist_shows_wallets_from_every_shard_newest_first(viewer) -> None:
    owner, _ = make_client("acme")
    wallets = [make_wallet(owner, shard=shard) for shard in ["shard_00", "shard_01", "shard_00", "shard_01"]]
    response = viewer.get("/admin/ledger/wallet/")
    assert listed_ids(response) == [str(w.id) for w in reversed(wallets)]  # ids are time-ordered
    assert response.context["cl"].result_count == 4
    assert response.context["cl"].full_result_count == 4
    html = response.content.decode()
    assert all(str(w.id) in html for w in wallets)
    assert "shard_00" in html
    assert "shard_01" in html
    assert "acme (#" in html  # the client's name, read from the control database


def test_pagination_across_shards_returns_each_row_exactly_once(viewer, monkeypatch) -> None:
    owner, _ = make_client()
    shards = ["shard_00", "shard_01", "shard_01", "shard_00", "shard_01", "shard_01", "shard_00", "shard_01"]
    created = {str(make_wallet(owner, shard=shard).id) for shard in shards}
    monkeypatch.setattr(admin.site._registry[Wallet], "list_per_page", 3)
    pages = [listed_ids(viewer.get(f"/admin/ledger/wallet/?p={page}")) for page in (1, 2, 3)]
    assert [len(page) for page in pages] == [3, 3, 2]
    seen = [wallet_id for page in pages for wallet_id in page]
    assert len(seen) == len(set(seen)) == 8
    assert set(seen) == created
    assert seen == sorted(seen, reverse=True)  # one global order across pages
    assert viewer.get("/admin/ledger/wallet/?p=4").status_code == 302  # past the end: Django's "invalid page" redirect


def test_search_by_wallet_id_goes_straight_to_its_shard(viewer) -> None:
    owner, _ = make_client()
    target = make_wallet(owner, shard="shard_01")
    make_wallet(owner, shard="shard_00")
    make_wallet(owner, shard="shard_01")
    with (
        CaptureQueriesContext(connections["shard_00"]) as on_00,
        CaptureQueriesContext(connections["shard_01"]) as on_01,
    ):
        response = viewer.get(f"/admin/ledger/wallet/?q={target.id}")
    assert listed_ids(response) == [str(target.id)]
    assert response.context["cl"].shard_aliases_in_scope == ["shard_01"]
    assert any(target.id.hex in q["sql"] for q in on_01.captured_queries)
    assert not any(target.id.hex in q["sql"] for q in on_00.captured_queries), "the other shard is not asked"


def test_search_by_client_name_fans_out_to_every_shard(viewer) -> None:
    acme, _ = make_client("acme")
    globex, _ = make_client("globex")
    acme_wallets = {str(make_wallet(acme, shard=s).id) for s in ["shard_00", "shard_01"]}
    make_wallet(globex, shard="shard_00")
    response = viewer.get("/admin/ledger/wallet/?q=acm")
    assert set(listed_ids(response)) == acme_wallets
    assert response.context["cl"].shard_aliases_in_scope == ["shard_00", "shard_01"]
    assert listed_ids(viewer.get(f"/admin/ledger/wallet/?q={acme.id}")) != []
    assert listed_ids(viewer.get("/admin/ledger/wallet/?q=nobody-called-this")) == []


def test_filters_by_shard_status_and_currency(viewer) -> None:
    owner, _ = make_client()
    usd_00 = make_wallet(owner, shard="shard_00")
    eur_01 = make_wallet(owner, shard="shard_01", currency="EUR")
    from apps.ledger.services import wallet_set_status

    wallet_set_status(wallet_id=eur_01.id, status="frozen")
    assert listed_ids(viewer.get("/admin/ledger/wallet/?shard=shard_00")) == [str(usd_00.id)]
    assert listed_ids(viewer.get("/admin/ledger/wallet/?status__exact=frozen")) == [str(eur_01.id)]
    response = viewer.get("/admin/ledger/wallet/?currency=EUR")
    assert listed_ids(response) == [str(eur_01.id)]
    assert "?currency=USD" in response.content.decode()  # choices gathered from every shard
    assert listed_ids(viewer.get("/admin/ledger/wallet/?created_at__gte=2000-01-01+00:00:00%2B00:00")) != []


def test_transfers_and_entries_changelists_span_shards_and_route_by_id(viewer) -> None:
    owner, _ = make_client()
    a, b = cross_shard_pair(owner, funded=1000)
    b_funded = make_wallet(owner, funded=500, shard="shard_01")
    t1 = saga.transfer_advance(create_transfer(owner, a, b.id, 100).id)
    t2 = create_transfer(owner, b_funded, a.id, 50)  # lives on shard_01, its payer's shard
    assert alias_for_id(t2.id) == "shard_01"
    assert set(listed_ids(viewer.get("/admin/transfers/transfer/"))) == {str(t1.id), str(t2.id)}
    assert listed_ids(viewer.get(f"/admin/transfers/transfer/?q={t2.id}")) == [str(t2.id)]
    assert listed_ids(viewer.get(f"/admin/transfers/transfer/?q={a.id}")) == [str(t1.id)]  # paid by a
    assert listed_ids(viewer.get(f"/admin/transfers/transfer/?payee_id={b.id}")) == [str(t1.id)]  # fans out
    entries = listed_ids(viewer.get("/admin/ledger/ledgerentry/"))
    assert len(entries) == 2 + 3  # two deposits, t1's debit + credit, t2's debit
    assert len(listed_ids(viewer.get(f"/admin/ledger/ledgerentry/?q={a.id}"))) == 2  # deposit, debit


def test_detail_pages_load_from_the_rows_shard_and_are_read_only(viewer) -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner)
    created = create_transfer(owner, payer, payee.id, 300, description="Rent", metadata={"flat": "4B"})
    transfer = saga.transfer_advance(created.id)
    page = viewer.get(f"/admin/ledger/wallet/{payee.id}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "shard_01" in html
    assert "3.00 USD" in html
    assert "Freeze wallet" not in html  # a viewer gets no action buttons
    page = viewer.get(f"/admin/transfers/transfer/{transfer.id}/change/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "completed" in html
    assert "credited" in html
    assert "Rent" in html
    assert "4B" in html  # the client's notes, as given
    entry = viewer.get(f"/admin/ledger/ledgerentry/?q={payer.id}").context["cl"].result_list[0]
    assert viewer.get(f"/admin/ledger/ledgerentry/{entry.pk}/change/").status_code == 200

    # No way to change money through the admin, even for a superuser.
    root = logged_in(make_staff("root", None))
    before = wallet_balance(payee.id)
    assert root.post(f"/admin/ledger/wallet/{payee.id}/change/", {"balance_minor": 10**6}).status_code == 403
    assert root.post(f"/admin/ledger/ledgerentry/{entry.pk}/delete/").status_code == 403
    assert root.get("/admin/ledger/wallet/add/").status_code == 403
    assert wallet_balance(payee.id) == before


def test_unknown_or_malformed_ids_are_not_found(viewer) -> None:
    response = viewer.get("/admin/ledger/wallet/not-an-id/change/")
    assert response.status_code == 302  # Django admin: "doesn't exist", back to the index
    assert listed_ids(viewer.get("/admin/ledger/wallet/?q=00000000-0000-7000-8000-000000000000")) == []


def test_admin_login_is_required() -> None:
    from django.test import Client

    response = Client().get("/admin/ledger/wallet/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


@pytest.mark.slow
def test_with_a_shard_down_the_lists_show_the_others_and_say_what_is_missing(viewer, devstack) -> None:
    owner, _ = make_client()
    on_00 = make_wallet(owner, funded=100, shard="shard_00")
    make_wallet(owner, shard="shard_01")
    cluster = next(c for c in devstack.clusters() if c.server.alias == "shard_01")
    cluster.stop()
    try:
        response = viewer.get("/admin/ledger/wallet/")
        operations = viewer.get("/admin/operations/")
    finally:
        cluster.start()
        connections["shard_01"].close()
    assert listed_ids(response) == [str(on_00.id)]
    assert "Unreachable, so missing from this list: shard_01." in response.content.decode()
    assert operations.status_code == 200
    shards = {info.alias: info for info in operations.context["shards"]}
    assert shards["shard_01"].rows is None
    assert "OperationalError" in shards["shard_01"].error
    assert shards["shard_00"].rows["wallets"] == "1"
    assert "shard_01" in operations.context["unreachable"]
    assert len(listed_ids(viewer.get("/admin/ledger/wallet/"))) == 2  # back


def test_a_large_shard_is_counted_by_the_planners_estimate_not_a_scan(viewer, monkeypatch) -> None:
    """A page view must not COUNT millions of rows: above the threshold the changelist's count
    is PostgreSQL's estimate; a shard holding few rows is still counted exactly."""
    from apps.sharding import admin as sharded_admin

    owner, _ = make_client()
    for _ in range(12):
        make_wallet(owner, shard="shard_00")
    make_wallet(owner, shard="shard_01")
    for alias in ("shard_00", "shard_01"):
        with connections[alias].cursor() as cursor:
            cursor.execute("ANALYZE ledger_wallet")
    monkeypatch.setattr(sharded_admin, "EXACT_COUNT_UP_TO", 5)
    with (
        CaptureQueriesContext(connections["shard_00"]) as on_large,
        CaptureQueriesContext(connections["shard_01"]) as on_small,
    ):
        response = viewer.get("/admin/ledger/wallet/")
    assert response.status_code == 200
    assert response.context["cl"].result_count == 13  # 12 estimated (fresh statistics) + 1 counted
    assert not [q["sql"] for q in on_large.captured_queries if "COUNT(" in q["sql"].upper()]
    assert [q["sql"] for q in on_small.captured_queries if "COUNT(" in q["sql"].upper()]
