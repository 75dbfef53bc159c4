"""Holds in the admin: listed from every shard, voided by an operator with a reason, recorded."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.holds.models import Hold
from apps.holds.services import HoldRequest, hold_create
from apps.operators.models import OperatorAction
from apps.transfers.checks import check_ledger
from tests.factories import ALL_DATABASES, entry_kinds, make_client
from tests.factories import wallet_balance as balance
from tests.operators.helpers import cross_shard_pair, logged_in, make_staff

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def held(owner, payer, payee, amount: int) -> Hold:
    request = HoldRequest(owner.id, payer.id, payee.id, amount, "USD", timezone.now() + timedelta(hours=1),
                          str(uuid.uuid4()))  # fmt: skip
    return hold_create(request).hold


def test_an_operator_voids_a_hold_with_a_reason_and_a_second_void_is_refused() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    hold = held(owner, payer, payee, 300)
    viewer = logged_in(make_staff("vic", "viewers"))
    listed = viewer.get("/admin/holds/hold/")
    assert listed.status_code == 200
    assert [str(h.pk) for h in listed.context["cl"].result_list] == [str(hold.id)]
    page = viewer.get(f"/admin/holds/hold/{hold.id}/change/").content.decode()
    assert "Void hold" not in page
    assert viewer.post(f"/admin/holds/hold/{hold.id}/void/", {"reason": "x"}).status_code == 403
    assert balance(payer.id) == 700

    operator = logged_in(make_staff("olga", "operators"))
    assert "Void hold" in operator.get(f"/admin/holds/hold/{hold.id}/change/").content.decode()
    response = operator.post(f"/admin/holds/hold/{hold.id}/void/", {"reason": "order cancelled by phone"})
    assert response.status_code == 302
    stored = Hold.objects.using("shard_00").get(id=hold.id)
    assert (stored.status, stored.resolution_note) == ("voided", "operator: order cancelled by phone")
    assert balance(payer.id) == 1000
    operator.post(f"/admin/holds/hold/{hold.id}/void/", {"reason": "again"})
    records = list(OperatorAction.objects.using("default").order_by("id"))
    assert [(r.action, r.outcome) for r in records] == [("void_hold", "succeeded"), ("void_hold", "refused")]
    assert "voided" in records[1].detail
    assert entry_kinds(payer.id) == ["deposit", "hold", "release"]
    assert check_ledger().violations == []
