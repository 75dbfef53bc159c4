"""The staff groups and what they may do."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

from apps.operators.roles import ensure_roles
from tests.factories import ALL_DATABASES
from tests.operators.helpers import logged_in, make_staff

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def perms(group: str) -> set[str]:
    return {
        f"{p.content_type.app_label}.{p.codename}"
        for p in Group.objects.using("default").get(name=group).permissions.all()
    }


def test_groups_exist_after_migrate_with_their_permissions() -> None:
    assert perms("operators") >= {"operators.freeze_wallet", "operators.compensate_transfer", "ledger.view_wallet"}
    assert "operators.freeze_wallet" not in perms("viewers")
    assert perms("viewers") == perms("auditors")
    assert all(p.split(".")[1].startswith("view_") for p in perms("viewers"))


def test_ensure_roles_is_idempotent_and_repairs_a_group() -> None:
    Group.objects.using("default").get(name="viewers").permissions.clear()
    call_command("ensure_roles", verbosity=0)
    first = {g: perms(g) for g in ("operators", "viewers", "auditors")}
    ensure_roles()
    assert {g: perms(g) for g in first} == first
    assert first["viewers"]
    assert Group.objects.using("default").filter(name__in=first).count() == 3


@pytest.mark.parametrize("role", ["operators", "viewers", "auditors"])
def test_every_role_can_read_but_never_edit(role) -> None:
    client = logged_in(make_staff(f"user-{role}", role))
    for url in ("/admin/", "/admin/ledger/wallet/", "/admin/ledger/ledgerentry/", "/admin/transfers/transfer/",
                "/admin/operators/operatoraction/", "/admin/operations/"):  # fmt: skip
        assert client.get(url).status_code == 200, url
    assert client.get("/admin/auth/user/").status_code == 403  # staff management stays with superusers
