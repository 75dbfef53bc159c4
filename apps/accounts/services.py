from __future__ import annotations

import hashlib
import secrets

from django.db import transaction

from apps.accounts.models import ApiClient

KEY_PREFIX = "sk_"


def digest_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_client_create(
    *, name: str, rate_limit_per_second: int | None = None, rate_limit_burst: int | None = None
) -> tuple[ApiClient, str]:
    """Create an API client and return it with its key; the key is shown only this once."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic(using="default"):
        client = ApiClient.objects.using("default").create(
            name=name,
            key_prefix=key[:10],
            key_digest=digest_key(key),
            rate_limit_per_second=rate_limit_per_second,
            rate_limit_burst=rate_limit_burst,
        )
    return client, key
