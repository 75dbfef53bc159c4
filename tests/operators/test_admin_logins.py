"""Operators' logins: password rules, lockout after repeated failures (per user and per address), session expiry."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.test import Client

from tests.factories import ALL_DATABASES
from tests.operators.helpers import PASSWORD, make_staff

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def login(username: str, password: str, address: str = "10.0.0.1") -> int:
    """POST the admin's login form; the status (302: logged in, 200: form again, 429: locked out)."""
    client = Client(REMOTE_ADDR=address)
    client.get("/admin/login/")
    response = client.post("/admin/login/?next=/admin/", {"username": username, "password": password})
    return response.status_code


def failures() -> int:
    return settings.AXES_FAILURE_LIMIT


def test_a_user_is_locked_out_after_repeated_failures_even_with_the_right_password() -> None:
    make_staff("olga", "operators")
    assert login("olga", PASSWORD) == 302
    for attempt in range(failures()):
        assert login("olga", f"wrong-{attempt}", address=f"10.0.1.{attempt}") in (200, 429)
    # Locked by name, whatever the address: the right password is refused too.
    assert login("olga", PASSWORD, address="10.0.9.9") == 429


def test_an_address_is_locked_out_after_failures_across_users() -> None:
    make_staff("pia", "operators")
    for attempt in range(failures()):
        login(f"guess-{attempt}", "wrong", address="10.0.2.2")
    assert login("pia", PASSWORD, address="10.0.2.2") == 429
    assert login("pia", PASSWORD, address="10.0.3.3") == 302  # pia herself is not locked


def test_weak_passwords_are_refused_and_sessions_expire() -> None:
    for weak in ("short", "password1234", "12345678901234"):
        with pytest.raises(ValidationError):
            validate_password(weak)
    validate_password("a long passphrase nobody guesses")
    assert settings.SESSION_COOKIE_AGE <= 12 * 3600
    assert settings.SESSION_EXPIRE_AT_BROWSER_CLOSE
