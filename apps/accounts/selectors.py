from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Q

from apps.accounts.models import ApiClient
from apps.accounts.services import digest_key


def api_client_get_by_key(key: str) -> ApiClient | None:
    return ApiClient.objects.using("default").filter(key_digest=digest_key(key), is_active=True).first()


def api_client_ids_matching(term: str, *, limit: int = 100) -> list[int]:
    """Clients whose name contains `term`, whose key starts with it, or whose id it is (admin search)."""
    condition = Q(name__icontains=term) | Q(key_prefix__startswith=term)
    if term.isdigit():
        condition |= Q(id=int(term))
    return list(ApiClient.objects.using("default").filter(condition).values_list("id", flat=True)[:limit])


def api_client_names(client_ids: Iterable[int]) -> dict[int, str]:
    return dict(ApiClient.objects.using("default").filter(id__in=set(client_ids)).values_list("id", "name"))
