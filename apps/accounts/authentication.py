from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from apps.accounts.models import ApiClient
from apps.accounts.selectors import api_client_get_by_key


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer <key>` identifies the API client."""

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[ApiClient, str] | None:
        parts = get_authorization_header(request).split()
        if not parts:
            return None
        if parts[0].lower() != self.keyword or len(parts) != 2:
            raise AuthenticationFailed("Use the header 'Authorization: Bearer <api key>'.")
        key = parts[1].decode("latin-1")
        client = api_client_get_by_key(key)
        if client is None:
            raise AuthenticationFailed("Unknown or revoked API key.")
        return client, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class IsApiClient(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, ApiClient)
