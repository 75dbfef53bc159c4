"""Auditor accounts of the embedded audit endpoint: who may query it, and how the project's
own tools log in to it.

Accounts come from `SHARDWALLET_AUDIT_AUDITORS` (`name:secret,name2:secret2`) and/or a file
(`SHARDWALLET_AUDIT_AUDITORS_FILE`, one `name:secret` a line, `#` comments). A secret may be
given as `sha256:<64 hex digits>` (as ClickHouse's `password_sha256_hex`), so the file need
not hold it in clear. The endpoint keeps only each secret's SHA-256 and compares digests in
constant time. The tools (`audit_sql`, `audit_query`, `reconcile`) log in with
`SHARDWALLET_AUDIT_LOGIN` (`name:secret`), else with the first account given in clear.

No Django here: `wallet_project.settings` reads the accounts with it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_SHA256 = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
# Compared against when the name is unknown, so that a wrong name costs what a wrong secret does.
_NO_SUCH_ACCOUNT = hashlib.sha256(b"no such auditor").hexdigest()


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Login:
    """The credentials a client sends."""

    user: str
    password: str

    def __repr__(self) -> str:  # never the secret, in a traceback or a log
        return f"Login(user={self.user!r})"


def parse_login(text: str, *, source: str = "SHARDWALLET_AUDIT_LOGIN") -> Login | None:
    """`name:secret` (empty: none)."""
    if not text.strip():
        return None
    name, sep, secret = text.strip().partition(":")
    if not sep or not _NAME.match(name) or not secret:
        raise ValueError(f"{source} must be name:secret")
    return Login(name, secret)


def parse_accounts(entries: list[str], *, source: str) -> tuple[dict[str, str], Login | None]:
    """`name:secret` or `name:sha256:<hex>` entries -> ({name: sha256 hex}, first clear-text login)."""
    digests: dict[str, str] = {}
    first: Login | None = None
    for raw in entries:
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, secret = entry.partition(":")
        if not sep or not secret:
            raise ValueError(f"{source}: an auditor account is name:secret (or name:sha256:<hex>), got {name!r}")
        if not _NAME.match(name):
            raise ValueError(f"{source}: {name!r} is not an account name (letters, digits, _ . @ -)")
        if name in digests:
            raise ValueError(f"{source}: auditor {name!r} is listed twice")
        hashed = _SHA256.match(secret)
        digests[name] = hashed.group(1).lower() if hashed else secret_digest(secret)
        if first is None and not hashed:
            first = Login(name, secret)
    return digests, first


def load_accounts(inline: str, path: Path | None) -> tuple[dict[str, str], Login | None]:
    """The accounts of `SHARDWALLET_AUDIT_AUDITORS` and of the file (if given and present)."""
    digests, first = parse_accounts(inline.split(","), source="SHARDWALLET_AUDIT_AUDITORS")
    if path is not None and path.exists():
        from_file, first_in_file = parse_accounts(path.read_text().splitlines(), source=str(path))
        twice = sorted(set(digests) & set(from_file))
        if twice:
            raise ValueError(f"auditor(s) {', '.join(twice)} are both in SHARDWALLET_AUDIT_AUDITORS and in {path}")
        digests.update(from_file)
        first = first or first_in_file
    return digests, first


def authenticate(accounts: Mapping[str, str], user: str, password: str) -> bool:
    """Whether `password` is `user`'s secret; as long for an unknown user as for a wrong secret."""
    expected = accounts.get(user, _NO_SUCH_ACCOUNT)
    matches = hmac.compare_digest(secret_digest(password), expected)
    return matches and user in accounts
