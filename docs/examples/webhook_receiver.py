"""A webhook receiver for trying shardwallet's events locally (standard library only).

    python3 docs/examples/webhook_receiver.py --port 9099 --secret-file var/dev/webhook_secret

It verifies each request's `Shardwallet-Signature` (HMAC-SHA256 of "<t>.<raw body>" with the
endpoint's secret, `t` within five minutes), answers 2xx only to a valid one, deduplicates by
the event id (delivery is at least once) and prints each new event. The secret file is read at
each request, so the receiver can start before the endpoint is registered.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

TOLERANCE_SECONDS = 300


def signature_valid(secret: str, body: bytes, header: str) -> bool:
    fields = [part.strip().partition("=") for part in header.split(",")]
    timestamps = [value for name, _, value in fields if name == "t"]
    signatures = [value for name, _, value in fields if name == "v1"]
    if not timestamps or not timestamps[0].isdigit() or abs(time.time() - int(timestamps[0])) > TOLERANCE_SECONDS:
        return False
    expected = hmac.new(secret.encode(), timestamps[0].encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9099)
    parser.add_argument("--secret-file", type=Path, required=True)
    args = parser.parse_args()
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            secret = args.secret_file.read_text().strip() if args.secret_file.exists() else ""
            if not secret or not signature_valid(secret, body, self.headers.get("Shardwallet-Signature", "")):
                self.send_response(400)
                self.end_headers()
                print("refused: bad or missing signature", flush=True)
                return
            event = json.loads(body)
            self.send_response(204)
            self.end_headers()
            if event["id"] in seen:
                return  # a retry of an event already handled
            seen.add(event["id"])
            print(f"{event['type']:<22} {event['object_id']} seq {event['seq']}: {json.dumps(event['data']['object'])}",
                  flush=True)  # fmt: skip

        def log_message(self, format: str, *args: object) -> None:
            pass

    print(f"listening on http://127.0.0.1:{args.port}/hooks", flush=True)
    HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
