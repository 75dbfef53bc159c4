"""Money in the admin as an operator reads it: "25.00 USD" in the currency's own decimals, with
the stored minor units beside it, on wallet, ledger entry and transfer lists and pages."""

from __future__ import annotations

import re
import uuid

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from apps.ledger.services import wallet_withdraw
from apps.transfers import saga
from tests.factories import ALL_DATABASES, create_transfer, make_client, make_wallet
from tests.operators.helpers import logged_in, make_staff

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def money(text: str, minor: int) -> str:
    return f'{text} <span class="quiet">({minor} minor units)</span>'


def page(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    return response.content.decode()


def readonly_field(html: str, label: str) -> str:
    """The rendered value of a read-only field on a detail page, by its label."""
    match = re.search(rf"<label>{re.escape(label)}:</label>\s*<div class=\"readonly\">(.*?)</div>", html, re.S)
    assert match, f"no read-only field {label!r}"
    return match.group(1).strip()


@pytest.fixture
def viewer():
    return logged_in(make_staff("vera", "viewers"))


def test_wallet_balances_show_in_each_currencys_decimals_with_the_minor_units(viewer) -> None:
    owner, _ = make_client()
    usd = make_wallet(owner, funded=2_500, shard="shard_00")
    jpy = make_wallet(owner, funded=2_500, currency="JPY", shard="shard_01")
    kwd = make_wallet(owner, funded=2_500, currency="KWD", shard="shard_00")
    empty = make_wallet(owner, currency="EUR", shard="shard_01")

    listing = page(viewer, "/admin/ledger/wallet/")
    for shown in (money("25.00 USD", 2500), money("2,500 JPY", 2500), money("2.500 KWD", 2500), money("0.00 EUR", 0)):
        assert shown in listing
    assert "balance (minor units)" not in listing

    detail = page(viewer, f"/admin/ledger/wallet/{usd.id}/change/")
    assert readonly_field(detail, "Balance") == money("25.00 USD", 2500)
    assert "Balance minor" not in detail
    # The latest entries: the seed deposit, in the wallet's currency.
    assert f"<td>deposit</td><td>{money('25.00 USD', 2500)}</td><td>{money('25.00 USD', 2500)}</td>" in detail
    assert readonly_field(page(viewer, f"/admin/ledger/wallet/{jpy.id}/change/"), "Balance") == money("2,500 JPY", 2500)
    assert readonly_field(page(viewer, f"/admin/ledger/wallet/{kwd.id}/change/"), "Balance") == money("2.500 KWD", 2500)
    assert readonly_field(page(viewer, f"/admin/ledger/wallet/{empty.id}/change/"), "Balance") == money("0.00 EUR", 0)


def test_ledger_entries_show_signed_amounts_and_balances_in_their_wallets_currency(viewer) -> None:
    owner, _ = make_client()
    usd = make_wallet(owner, funded=2_500, shard="shard_00")
    jpy = make_wallet(owner, funded=2_500, currency="JPY", shard="shard_01")
    wallet_withdraw(wallet_id=usd.id, amount_minor=1_234, reference=f"w-{uuid.uuid4()}")

    listing = page(viewer, "/admin/ledger/ledgerentry/")
    assert f'<td class="field-amount">{money("-12.34 USD", -1234)}</td>' in listing
    assert f'<td class="field-balance_after">{money("12.66 USD", 1266)}</td>' in listing
    assert f'<td class="field-amount">{money("2,500 JPY", 2500)}</td>' in listing
    assert "Ledger entries" in listing

    withdrawal = viewer.get(f"/admin/ledger/ledgerentry/?q={usd.id}").context["cl"].result_list[0]
    detail = page(viewer, f"/admin/ledger/ledgerentry/{withdrawal.pk}/change/")
    assert readonly_field(detail, "Amount") == money("-12.34 USD", -1234)
    assert readonly_field(detail, "Balance after") == money("12.66 USD", 1266)
    assert "Amount minor" not in detail
    assert "Balance after minor" not in detail
    deposit = viewer.get(f"/admin/ledger/ledgerentry/?q={jpy.id}").context["cl"].result_list[0]
    detail = page(viewer, f"/admin/ledger/ledgerentry/{deposit.pk}/change/")
    assert readonly_field(detail, "Amount") == money("2,500 JPY", 2500)


def test_the_entries_list_reads_currencies_with_the_entries_not_once_per_row(viewer) -> None:
    owner, _ = make_client()
    for _ in range(6):
        make_wallet(owner, funded=100, shard="shard_00")
    with CaptureQueriesContext(connections["shard_00"]) as few:
        page(viewer, "/admin/ledger/ledgerentry/?shard=shard_00")
    for _ in range(6):
        make_wallet(owner, funded=100, shard="shard_00")
    with CaptureQueriesContext(connections["shard_00"]) as more:
        listing = page(viewer, "/admin/ledger/ledgerentry/?shard=shard_00")
    assert listing.count(money("1.00 USD", 100)) == 2 * 12  # amount and balance after, twelve entries
    assert len(more.captured_queries) == len(few.captured_queries)


def test_transfers_show_their_amount_in_their_currency(viewer) -> None:
    owner, _ = make_client()
    payer = make_wallet(owner, funded=1_000_000, currency="JPY", shard="shard_00")
    payee = make_wallet(owner, currency="JPY", shard="shard_01")
    transfer = saga.transfer_advance(create_transfer(owner, payer, payee.id, 123_456, currency="JPY").id)

    listing = page(viewer, "/admin/transfers/transfer/")
    assert f'<td class="field-amount">{money("123,456 JPY", 123456)}</td>' in listing
    detail = page(viewer, f"/admin/transfers/transfer/{transfer.id}/change/")
    assert readonly_field(detail, "Amount") == money("123,456 JPY", 123456)
    assert "Amount minor" not in detail


def test_the_admin_index_names_ledger_entries_in_plain_english(viewer) -> None:
    index = page(logged_in(make_staff("root", None)), "/admin/")
    assert "Ledger entries" in index
    assert "Ledger entrys" not in index
