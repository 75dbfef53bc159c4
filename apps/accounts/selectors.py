from __future__ import annotations

from apps.accounts.models import ApiClient
from apps.accounts.services import digest_key


def api_client_get_by_key(key: str) -> ApiClient | None:
    return ApiClient.objects.using("default").filter(key_digest=digest_key(key), is_active=True).first()
