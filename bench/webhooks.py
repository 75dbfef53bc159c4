"""The webhook phase: the single-request load with a webhook endpoint registered for every event,
POSTed to a receiver in this process; reports what reached it and how late."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class BenchReceiver:
    """Answers 204 to every POST; keeps each event id's first arrival and its lag behind the event."""

    def __init__(self) -> None:
        self.lags_ms: dict[str, float] = {}
        self.requests = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(204)
                self.end_headers()
                event = json.loads(body)
                created = datetime.fromisoformat(event["created_at"].replace("Z", "+00:00")).timestamp()
                with receiver.lock:
                    receiver.requests += 1
                    receiver.lags_ms.setdefault(event["id"], (time.time() - created) * 1000)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _call(api: str, key: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 - our own local API
        api + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        text = answer.read()
    return json.loads(text) if text else None


def register(api: str, key: str, url: str) -> str:
    return str(_call(api, key, "POST", "/v1/webhook_endpoints", {"url": url, "event_types": ["*"]})["id"])


def unregister(api: str, key: str, endpoint_id: str) -> None:
    _call(api, key, "DELETE", f"/v1/webhook_endpoints/{endpoint_id}")


def wait_delivered(receiver: BenchReceiver, expected: int, timeout: float) -> float | None:
    """Seconds until `expected` distinct events arrived, or None if they did not within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with receiver.lock:
            if len(receiver.lags_ms) >= expected:
                return time.monotonic() - started
        time.sleep(0.2)
    return None
