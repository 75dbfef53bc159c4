"""One webhook POST, with the guards a server that calls URLs its clients chose needs.

The URL's host is resolved once and every address checked: loopback, private, link-local,
shared, reserved and multicast addresses are refused (SSRF) unless
`WEBHOOK_ALLOW_PRIVATE_URLS` is on. The connection then goes to the checked address itself
(the Host header and TLS server name stay the URL's), so a second DNS answer cannot swap it.
Short timeouts, a cap on the bytes read, and no redirect followed. A sender's turn at an
endpoint resolves it once and keeps its connection alive across the turn's requests.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import urllib3
from django.conf import settings


class RefusedUrl(ValueError):
    """The URL may not receive webhooks (its form, or where it resolves)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class Outcome:
    status_code: int | None  # None: no HTTP answer
    error: str  # empty on a 2xx
    excerpt: str
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def parse_target(url: str) -> Target:
    """The URL's parts, or RefusedUrl: http(s) only (https only where required), no credentials."""
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise RefusedUrl("the URL holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedUrl(f"not a URL: {exc}") from None
    allowed = ("https",) if settings.WEBHOOK_REQUIRE_HTTPS else ("http", "https")
    if parts.scheme not in allowed:
        raise RefusedUrl(f"the URL must start with {' or '.join(s + '://' for s in allowed)}")
    if not parts.hostname:
        raise RefusedUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise RefusedUrl("the URL may not carry credentials")
    _check_host(parts.hostname)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path)


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode()
    except UnicodeError:
        raise RefusedUrl("the URL's host is not a valid name") from None
    labels = ascii_host.rstrip(".").split(".")
    valid = len(ascii_host) <= 253 and all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii() for label in labels
    )
    if not valid:
        raise RefusedUrl("the URL's host is not a valid name")


def _allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_literal(url: str) -> Target:
    """At registration: the URL's form, and a host that is plainly not public (an address, localhost)."""
    target = parse_target(url)
    if settings.WEBHOOK_ALLOW_PRIVATE_URLS:
        return target
    if target.host.lower() == "localhost" or target.host.lower().endswith(".localhost"):
        raise RefusedUrl("the URL's host is this machine")
    try:
        literal = ipaddress.ip_address(target.host)
    except ValueError:
        return target  # a name: checked again, resolved, at each delivery
    if not _allowed(str(literal)):
        raise RefusedUrl("the URL's address is not a public one")
    return target


def resolve(target: Target) -> str:
    """The address to connect to: every address the host resolves to must be allowed."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RefusedUrl(f"cannot resolve {target.host}: {exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise RefusedUrl(f"{target.host} resolves to nothing")
    if not settings.WEBHOOK_ALLOW_PRIVATE_URLS:
        refused = [a for a in addresses if not _allowed(a)]
        if refused:
            raise RefusedUrl(f"{target.host} resolves to a non-public address ({refused[0]})")
    return addresses[0]


class EndpointSession:
    """Requests to one URL over one kept-alive connection: its host resolved and checked once
    (a sender's turn at an endpoint is a few seconds at most), the connection reused while the
    receiver keeps it open."""

    def __init__(self, url: str) -> None:
        self.refusal: str | None = None
        self.pool: urllib3.HTTPConnectionPool | None = None
        self.used = False
        try:
            self.target = parse_target(url)
            self.address = resolve(self.target)
        except RefusedUrl as exc:
            self.refusal = f"refused: {exc}"

    def __enter__(self) -> EndpointSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def _pool(self) -> urllib3.HTTPConnectionPool:
        if self.pool is None:
            timeout = settings.WEBHOOK_TIMEOUT_SECONDS
            limits = urllib3.Timeout(connect=timeout, read=timeout)
            target = self.target
            if target.scheme == "https":
                self.pool = urllib3.HTTPSConnectionPool(
                    self.address, target.port, timeout=limits, retries=False, maxsize=1,
                    server_hostname=target.host, assert_hostname=target.host, cert_reqs="CERT_REQUIRED",
                    ca_certs=certifi.where(),
                )  # fmt: skip
            else:
                self.pool = urllib3.HTTPConnectionPool(
                    self.address, target.port, timeout=limits, retries=False, maxsize=1
                )
        return self.pool

    def post(self, body: bytes, headers: dict[str, str]) -> Outcome:
        started = time.monotonic()

        def done(status: int | None, error: str, excerpt: bytes = b"") -> Outcome:
            text = excerpt[:500].decode("utf-8", "replace")
            return Outcome(status, error[:500], text, int((time.monotonic() - started) * 1000))

        if self.refusal is not None:
            return done(None, self.refusal)
        reused, self.used = self.used, True
        try:
            try:
                status, excerpt = self._exchange(body, headers, started)
            except urllib3.exceptions.ProtocolError:
                if not reused:
                    raise
                # The receiver closed the kept-alive connection between requests: once more, on a new one.
                self.close()
                status, excerpt = self._exchange(body, headers, started)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self.close()
            return done(None, f"{type(exc).__name__}: {exc}")
        return done(status, "" if 200 <= status < 300 else f"HTTP {status}", excerpt)

    def _exchange(self, body: bytes, headers: dict[str, str], started: float) -> tuple[int, bytes]:
        """One request and the start of its answer: (status, excerpt)."""
        response = self._pool().urlopen(
            "POST", self.target.path, body=body, headers={**headers, "Host": self.target.host_header},
            redirect=False, retries=False, preload_content=False, assert_same_host=False,
        )  # fmt: skip
        excerpt, complete = _read_capped(response, started + 2 * settings.WEBHOOK_TIMEOUT_SECONDS)
        if not complete:  # unread bytes would spoil the next request on this connection
            response.close()
            self.close()
        response.release_conn()
        return response.status, excerpt


def _read_capped(response: urllib3.BaseHTTPResponse, deadline: float) -> tuple[bytes, bool]:
    """At most WEBHOOK_MAX_RESPONSE_BYTES of the answer, and no reading past the deadline; and
    whether the answer was read to its end."""
    limit = settings.WEBHOOK_MAX_RESPONSE_BYTES
    chunks: list[bytes] = []
    read = 0
    while read < limit and time.monotonic() < deadline:
        chunk = response.read(min(4096, limit - read), decode_content=False)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        read += len(chunk)
    return b"".join(chunks), False
