"""Staff roles: `operators` act (freeze, re-drive, compensate), `viewers` and `auditors` only read.

Groups are data, so they are (re)created idempotently after every migrate and every flush
of `default` (the test suite flushes), and by `manage.py ensure_roles`.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig, apps
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from django.db import transaction

OPERATORS, VIEWERS, AUDITORS = "operators", "viewers", "auditors"

# Read-only access to what the admin shows.
VIEW_PERMISSIONS = [
    "ledger.view_wallet",
    "ledger.view_ledgerentry",
    "transfers.view_transfer",
    "holds.view_hold",
    "operators.view_operatoraction",
    "accounts.view_apiclient",
    "webhooks.view_webhookendpoint",
    "webhooks.view_webhookdelivery",
    "webhooks.view_webhookattempt",
]
ACTION_PERMISSIONS = [
    "operators.freeze_wallet",
    "operators.redrive_transfer",
    "operators.compensate_transfer",
    "operators.void_hold",
]
ROLES: dict[str, list[str]] = {
    OPERATORS: VIEW_PERMISSIONS + ACTION_PERMISSIONS,
    VIEWERS: VIEW_PERMISSIONS,
    AUDITORS: VIEW_PERMISSIONS,
}


def _permissions(names: list[str], using: str) -> list[Permission]:
    found = []
    for name in names:
        app_label, codename = name.split(".")
        found.append(Permission.objects.using(using).get(content_type__app_label=app_label, codename=codename))
    return found


def ensure_roles(using: str = "default") -> dict[str, int]:
    """Create the groups with exactly their permissions; idempotent. Returns permissions per group."""
    for label in {name.split(".")[0] for names in ROLES.values() for name in names}:
        # Permissions appear app by app after a migrate: make sure every one we need exists now.
        create_permissions(apps.get_app_config(label), verbosity=0, using=using)
    counts = {}
    with transaction.atomic(using=using):
        for group_name, names in ROLES.items():
            group, _ = Group.objects.using(using).get_or_create(name=group_name)
            group.permissions.set(_permissions(names, using))
            counts[group_name] = len(names)
    return counts


def ensure_roles_after_migrate(sender: AppConfig, using: str = "default", **kwargs: Any) -> None:
    if sender.label == "operators" and using == "default":
        ensure_roles(using)
