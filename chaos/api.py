"""A minimal HTTP client for the API: one keep-alive connection per client thread, standard library only."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any


class NoAnswer(Exception):
    """The request got no HTTP answer (refused, reset, timed out): its outcome is unknown."""


@dataclass(frozen=True)
class Response:
    status: int
    body: Any  # decoded JSON, or None when the body is not JSON
    replayed: bool

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return self.body["error"].get("code")
        return None


class ApiClient:
    def __init__(self, host: str, port: int, api_key: str) -> None:
        self.host, self.port = host, port
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._conn: http.client.HTTPConnection | None = None

    def clone(self) -> ApiClient:
        """Another client with the same key and its own connection."""
        twin = ApiClient(self.host, self.port, "")
        twin.headers = dict(self.headers)
        return twin

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        self._conn.timeout = timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self, method: str, path: str, *, body: Any = None, key: str | None = None, timeout: float = 10.0
    ) -> Response:
        headers = dict(self.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        payload = None if body is None else json.dumps(body).encode()
        try:
            conn = self._connection(timeout)
            conn.request(method, path, body=payload, headers=headers)
            raw = conn.getresponse()
            data = raw.read()
        except (OSError, http.client.HTTPException) as exc:  # timeouts are OSErrors too
            # The connection's state is unknown after any failure: start afresh next time.
            self.close()
            raise NoAnswer(f"{type(exc).__name__}: {exc}".strip()) from exc
        if raw.getheader("Connection", "").lower() == "close":
            self.close()
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        return Response(raw.status, decoded, raw.getheader("Idempotent-Replayed") == "true")
