"""A real HTTP receiver for webhook tests: records every request, answers as told."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    client_port: int = 0  # the sender's end of the connection: one per connection

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Behaviour:
    fail_first: int = 0  # answer 500 to this many requests first
    hang_seconds: float = 0.0  # sleep this long before answering
    status: int = 200
    extra_headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    fail_nth: int = 0  # answer 500 to the n-th request (1-based) only
    keep_alive: bool = False  # HTTP/1.1: connections stay open between requests
    close_after_each: bool = False  # with keep_alive: close anyway after each answer, without saying so


class Receiver:
    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if self.behaviour.keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    failing = receiver.behaviour.fail_first > 0
                    if failing:
                        receiver.behaviour.fail_first -= 1
                    nth = len(receiver.received) + 1
                    status = 500 if failing or nth == receiver.behaviour.fail_nth else receiver.behaviour.status
                    port = self.client_address[1]
                    receiver.received.append(Received(dict(self.headers.items()), body, status, port))
                if receiver.behaviour.hang_seconds:
                    time.sleep(receiver.behaviour.hang_seconds)
                self.send_response(status)
                for name, value in receiver.behaviour.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(receiver.behaviour.body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the sender gave up waiting
                    self.wfile.write(receiver.behaviour.body)
                if receiver.behaviour.close_after_each:
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def accepted_ids(self) -> list[str]:
        with self.lock:
            return [r.event["id"] for r in self.received if 200 <= r.status < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
