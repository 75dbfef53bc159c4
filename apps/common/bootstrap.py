"""First-run data for `make run`: a demo API client and an admin user, kept under the stack dir."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from apps.accounts.models import ApiClient
from apps.accounts.services import api_client_create, digest_key


def _stack_file(name: str) -> Path:
    return Path(settings.DEVSTACK_DIR) / name


def demo_api_key() -> str:
    """The demo client's key: reused across runs while its client exists, else a new one."""
    key_file = _stack_file("demo_api_key")
    if key_file.exists():
        key = key_file.read_text().strip()
        if ApiClient.objects.using("default").filter(key_digest=digest_key(key), is_active=True).exists():
            return key
    _client, key = api_client_create(name="demo")
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key


def admin_credentials() -> tuple[str, str]:
    password_file = _stack_file("admin_password")
    user_model = get_user_model()
    user = user_model.objects.using("default").filter(username="admin").first()
    if user is not None and password_file.exists():
        return "admin", password_file.read_text().strip()
    password = secrets.token_urlsafe(12)
    if user is None:
        user_model.objects.db_manager("default").create_superuser("admin", "admin@example.com", password)
    else:
        user.set_password(password)
        user.save(using="default")
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    return "admin", password


def audit_login() -> tuple[str, str] | None:
    """An auditor account for the stack's audit endpoint: the configured one (settings.AUDIT_LOGIN),
    else one made for this stack in DEVSTACK_DIR/audit_auditors, the accounts file the settings
    read by default: `run_cdc` lets it in and `make audit-sql` logs in with it, nobody typing it."""
    if settings.AUDIT_AUDITORS:
        login = settings.AUDIT_LOGIN
        return (login.user, login.password) if login is not None else None
    accounts_file = _stack_file("audit_auditors")
    if Path(settings.AUDIT_AUDITORS_FILE) != accounts_file:
        return None  # an operator's file (with no account in it): not ours to write
    password = secrets.token_urlsafe(18)
    accounts_file.touch(mode=0o600)
    accounts_file.write_text(
        f"# the audit endpoint's accounts for this stack (name:secret), made by `make run`\nauditor:{password}\n"
    )
    return "auditor", password
