from __future__ import annotations

import time
from collections.abc import Iterable

from django.db.models import Q

from apps.accounts.models import ApiClient
from apps.accounts.services import digest_key

# Keys are checked on every request; a short per-process cache saves a round trip to the
# control database each time. A revoked key stops working within this many seconds.
KEY_CACHE_SECONDS = 30.0
# An unknown key is remembered too, briefly: a client retrying with a wrong key in a loop
# costs a dictionary lookup, not a query per request.
UNKNOWN_KEY_CACHE_SECONDS = 5.0
_MAX_CACHED_KEYS = 10_000
_cache: dict[str, tuple[float, ApiClient | None]] = {}


def api_client_get_by_key(key: str) -> ApiClient | None:
    digest = digest_key(key)
    now = time.monotonic()
    cached = _cache.get(digest)
    if cached is not None and cached[0] > now:
        return cached[1]
    client = ApiClient.objects.using("default").filter(key_digest=digest, is_active=True).first()
    if len(_cache) >= _MAX_CACHED_KEYS:
        _cache.clear()
    _cache[digest] = (now + (KEY_CACHE_SECONDS if client is not None else UNKNOWN_KEY_CACHE_SECONDS), client)
    return client


def forget_cached_keys() -> None:
    _cache.clear()


def api_client_ids_matching(term: str, *, limit: int = 100) -> list[int]:
    """Clients whose name contains `term`, whose key starts with it, or whose id it is (admin search)."""
    condition = Q(name__icontains=term) | Q(key_prefix__startswith=term)
    if term.isdigit():
        condition |= Q(id=int(term))
    return list(ApiClient.objects.using("default").filter(condition).values_list("id", flat=True)[:limit])


def api_client_names(client_ids: Iterable[int]) -> dict[int, str]:
    return dict(ApiClient.objects.using("default").filter(id__in=set(client_ids)).values_list("id", "name"))
