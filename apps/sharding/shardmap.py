"""The shard map: physical PostgreSQL shards and the logical buckets mapped onto them.

`shards.yaml` is read once at start-up and validated strictly, because a wrong map
silently sends money rows to the wrong database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wallet_project.environment import Environment

MAX_BUCKETS = 4096  # ids carry the bucket in 12 bits (see apps.sharding.ids)
ALIAS_PATTERN = re.compile(r"^shard_\d{2,}$")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_ENV = Environment()
# A server that stops answering (a network partition, a host gone) fails a connection's pending
# send after this long, and an idle connection's keepalive probes after about keepalives_idle
# plus this, instead of TCP's 15 minutes: the request gets 503 (safe to retry), the saga step
# retries, and the threads and workers it held serve other shards again.
TCP_USER_TIMEOUT_MS = int(_ENV.optional("SHARDWALLET_DB_TCP_USER_TIMEOUT_MS", "5000"))
KEEPALIVE_OPTIONS = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
}
# TLS to every database server (libpq's parameters), unless a server's entry says otherwise:
# production verifies the server's certificate and name (verify-full) against
# SHARDWALLET_DB_SSLROOTCERT; development and tests leave it to libpq (`prefer`). A client
# certificate (SHARDWALLET_DB_SSLCERT/SSLKEY) for servers that ask for one (`hostssl ... cert`).
TLS_DEFAULTS = {
    "sslmode": _ENV.optional("SHARDWALLET_DB_SSLMODE", "verify-full" if _ENV.production else ""),
    "sslrootcert": _ENV.optional("SHARDWALLET_DB_SSLROOTCERT", ""),
    "sslcert": _ENV.optional("SHARDWALLET_DB_SSLCERT", ""),
    "sslkey": _ENV.optional("SHARDWALLET_DB_SSLKEY", ""),
}
SSL_MODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
TLS_KEYS = tuple(TLS_DEFAULTS)
# The database login this process uses on every server, instead of the map's `user` (with the
# password of SHARDWALLET_DB_PASSWORD(_FILE)): each role of a least-privilege deployment gets
# its own (apps.sharding.db_roles; the API a member of shardwallet_app, the migrations the owner).
LOGIN_OVERRIDE = _ENV.optional("SHARDWALLET_DB_USER", "")
# The shard servers the control database knows (apps.sharding.mapstore), as DatabaseServer's fields.
SERVERS_SQL = "SELECT alias, host, port, name, username, password, members FROM sharding_server ORDER BY alias"
# libpq's choice among a cluster's members (`target_session_attrs`): the one that takes writes.
# Only said when a server has members: one server is used whatever it is.
CLUSTER_SESSION_ATTRS = "read-write"
MEMBER_PATTERN = re.compile(r"^(?P<host>[^\s:,]+):(?P<port>\d{1,5})$")


class ShardMapError(ValueError):
    """shards.yaml is missing, malformed or inconsistent."""


def _quote(value: str) -> str:
    """A value inside a libpq conninfo's single quotes: backslash and quote escaped."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _read_secret(path: str, what: str) -> str:
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise ShardMapError(f"{what}: password file {path} cannot be read ({exc.strerror})") from None


def default_password() -> str:
    """The password of every server whose entry names none: SHARDWALLET_DB_PASSWORD, or the file
    SHARDWALLET_DB_PASSWORD_FILE names. Read at each new connection (a rotated secret is taken
    without a restart), never stored in the control database."""
    env = Environment()
    value = env.value("SHARDWALLET_DB_PASSWORD")
    if env.problems:
        raise ShardMapError("; ".join(env.problems))
    return value or ""


@dataclass(frozen=True)
class DatabaseServer:
    """Where one PostgreSQL database lives."""

    alias: str
    host: str
    port: int
    name: str
    user: str = "postgres"
    password: str = ""  # given in the map itself (or shard_add --password); stored in the control database
    password_file: str = ""  # read at each connection; only the path is kept
    # TLS for this server; empty: the deployment's (TLS_DEFAULTS).
    sslmode: str = ""
    sslrootcert: str = ""
    sslcert: str = ""
    sslkey: str = ""
    # The other servers of its replicated cluster ("host:port" each), tried after host:port in
    # order; a connection takes the first that accepts writes (CLUSTER_SESSION_ATTRS), so a
    # promoted standby is found by the next connection, without a restart or a new map.
    members: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> DatabaseServer:
        """A server as SERVERS_SQL reads it from the control database."""
        alias, host, port, name, user, password, members = row
        return cls(alias, host, port, name, user, password, members=tuple(members or ()))

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        """Where its cluster's servers listen: its own host and port first, then its members'."""
        others = [MEMBER_PATTERN.match(member) for member in self.members]
        return [(self.host, self.port), *((m["host"], int(m["port"])) for m in others if m)]

    @property
    def libpq_address(self) -> dict[str, str]:
        """host, port (comma lists for a cluster) and, for a cluster, target_session_attrs."""
        endpoints = self.endpoints
        address = {"host": ",".join(h for h, _ in endpoints), "port": ",".join(str(p) for _, p in endpoints)}
        if len(endpoints) > 1:
            address["target_session_attrs"] = CLUSTER_SESSION_ATTRS
        return address

    @property
    def tls(self) -> dict[str, str]:
        """libpq's TLS parameters for this server: its own, else the deployment's."""
        own = {"sslmode": self.sslmode, "sslrootcert": self.sslrootcert, "sslcert": self.sslcert, "sslkey": self.sslkey}
        return {key: own[key] or TLS_DEFAULTS[key] for key in TLS_KEYS if own[key] or TLS_DEFAULTS[key]}

    @property
    def login(self) -> str:
        """The user to connect as: SHARDWALLET_DB_USER's, else the entry's."""
        return LOGIN_OVERRIDE or self.user

    @property
    def secret(self) -> str:
        """The password to connect with: the entry's own, its file's, else the deployment's default
        (always the default for SHARDWALLET_DB_USER's login)."""
        if LOGIN_OVERRIDE:
            return default_password()
        if self.password:
            return self.password
        if self.password_file:
            return _read_secret(self.password_file, self.alias)
        return default_password()

    @property
    def is_local(self) -> bool:
        """True when the local stack may create and start this server itself."""
        return self.host in LOOPBACK_HOSTS

    def conninfo(self, **extra: Any) -> str:
        """A libpq connection string (quoted), for tools that connect outside Django."""
        parts = {
            **self.libpq_address, "dbname": self.name, "user": self.login,
            "password": self.secret, "connect_timeout": 5, **KEEPALIVE_OPTIONS, **self.tls, **extra,
        }  # fmt: skip
        return " ".join(f"{k}='{_quote(str(v))}'" for k, v in parts.items() if v != "")

    def django_settings(self) -> dict[str, Any]:
        address = self.libpq_address
        return {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": address["host"],
            "PORT": address["port"],
            "NAME": self.name,
            "USER": self.login,
            "PASSWORD": self.secret,
            # The backend (apps/observability/backend) asks it for the password at each new
            # connection, so a rotated password file needs no restart.
            "SHARDWALLET_SERVER": self,
            # Persistent connections: a new connection costs more than a transfer. No health
            # check round trip per request: a dead connection fails its query, the request
            # gets 503 (safe to retry) and the connection is replaced.
            "CONN_MAX_AGE": None,
            "CONN_HEALTH_CHECKS": False,
            # Keepalives and a TCP user timeout: a shard that vanishes (rather than refusing
            # connections) is noticed in seconds. lock_timeout: a statement stuck behind a lock
            # fails (transient: retried, or 503 to the client) instead of holding its own locks.
            "OPTIONS": {
                "connect_timeout": 3,
                **KEEPALIVE_OPTIONS,
                **self.tls,
                **({key: address[key] for key in ("target_session_attrs",) if key in address}),
                "options": "-c lock_timeout=5s",
            },
            "TEST": {"NAME": self.name},
        }


@dataclass(frozen=True)
class BucketRange:
    first: int
    last: int
    alias: str


@dataclass(frozen=True)
class ShardMap:
    control: DatabaseServer
    shards: dict[str, DatabaseServer]
    bucket_count: int
    ranges: tuple[BucketRange, ...]
    _alias_by_bucket: tuple[str, ...] = field(repr=False, default=())
    # Declared by a test stack's map: its data may be wiped. The test suite refuses any other.
    throwaway: bool = False
    # Version of the bucket owners: 0 for the file's initial layout, then the control
    # database's epoch, bumped by every move (apps.sharding.mapstore).
    epoch: int = 0

    @property
    def aliases(self) -> list[str]:
        return sorted(self.shards)

    @property
    def servers(self) -> list[DatabaseServer]:
        """Every database server of the map: the control database, then each shard's."""
        return [self.control, *self.shards.values()]

    def alias_for_bucket(self, bucket: int) -> str:
        if not 0 <= bucket < self.bucket_count:
            raise ShardMapError(f"bucket {bucket} is outside 0..{self.bucket_count - 1}")
        return self._alias_by_bucket[bucket]

    def buckets_of(self, alias: str) -> list[int]:
        return [b for b, a in enumerate(self._alias_by_bucket) if a == alias]

    def with_owners(self, shards: dict[str, DatabaseServer], owners: list[str], epoch: int) -> ShardMap:
        """This map with other servers and bucket owners (one alias per bucket, in bucket order)."""
        if len(owners) != self.bucket_count:
            raise ShardMapError(f"{len(owners)} bucket owners for {self.bucket_count} buckets")
        unknown = set(owners) - set(shards)
        if unknown:
            raise ShardMapError(f"buckets owned by unknown shards {sorted(unknown)}")
        return ShardMap(
            self.control, shards, self.bucket_count, ranges_of(owners), tuple(owners), self.throwaway, epoch
        )


def ranges_of(owners: list[str] | tuple[str, ...]) -> tuple[BucketRange, ...]:
    """Consecutive buckets with one owner, as ranges."""
    ranges: list[BucketRange] = []
    for bucket, alias in enumerate(owners):
        if ranges and ranges[-1].alias == alias:
            ranges[-1] = BucketRange(ranges[-1].first, bucket, alias)
        else:
            ranges.append(BucketRange(bucket, bucket, alias))
    return tuple(ranges)


def _server(alias: str, raw: Any, where: str) -> DatabaseServer:
    if not isinstance(raw, dict):
        raise ShardMapError(f"{where}: expected a mapping with host, port and name")
    unknown = set(raw) - {"alias", "host", "port", "name", "user", "password", "password_file", "members", *TLS_KEYS}
    if unknown:
        raise ShardMapError(f"{where}: unknown keys {sorted(unknown)}")
    if "password" in raw and "password_file" in raw:
        raise ShardMapError(f"{where}: give password or password_file, not both")
    missing = [k for k in ("host", "port", "name") if k not in raw]
    if missing:
        raise ShardMapError(f"{where}: missing {missing}")
    try:
        port = int(raw["port"])
    except (TypeError, ValueError):
        raise ShardMapError(f"{where}: port must be an integer, got {raw['port']!r}") from None
    server = DatabaseServer(
        alias=alias,
        host=str(raw["host"]),
        port=port,
        name=str(raw["name"]),
        user=str(raw.get("user", "postgres")),
        password=str(raw.get("password", "")),
        password_file=str(raw.get("password_file", "")),
        **{key: str(raw.get(key, "")) for key in TLS_KEYS},
        members=_members(raw.get("members", []), where),
    )
    if server.sslmode and server.sslmode not in SSL_MODES:
        raise ShardMapError(f"{where}: sslmode must be one of {', '.join(sorted(SSL_MODES))}, got {server.sslmode!r}")
    if server.password_file:
        _read_secret(server.password_file, where)  # fail at start, not at the first connection
    return server


def _members(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(m, str) and MEMBER_PATTERN.match(m) for m in raw):
        raise ShardMapError(f'{where}: members must be a list of "host:port" strings, got {raw!r}')
    return tuple(raw)


def parse_shard_map(data: Any, source: str = "shards.yaml") -> ShardMap:
    """Validate the parsed YAML and build the map; every error names what is wrong."""
    if not isinstance(data, dict):
        raise ShardMapError(f"{source}: expected a mapping at top level")
    bucket_count = data.get("buckets")
    if not isinstance(bucket_count, int) or not 1 <= bucket_count <= MAX_BUCKETS:
        raise ShardMapError(f"{source}: 'buckets' must be an integer in 1..{MAX_BUCKETS}")
    control = _server("default", data.get("control"), f"{source}: control")

    raw_shards = data.get("shards")
    if not isinstance(raw_shards, list) or not raw_shards:
        raise ShardMapError(f"{source}: 'shards' must be a non-empty list")
    shards: dict[str, DatabaseServer] = {}
    for i, raw in enumerate(raw_shards):
        alias = raw.get("alias") if isinstance(raw, dict) else None
        if not isinstance(alias, str) or not ALIAS_PATTERN.match(alias):
            raise ShardMapError(f"{source}: shards[{i}].alias must look like shard_00, got {alias!r}")
        if alias in shards:
            raise ShardMapError(f"{source}: shard alias {alias} is listed twice")
        shards[alias] = _server(alias, raw, f"{source}: shards[{i}] ({alias})")
    endpoints = [(s.host, s.port, s.name) for s in [control, *shards.values()]]
    if len(set(endpoints)) != len(endpoints):
        raise ShardMapError(f"{source}: two databases share the same host, port and name")

    raw_ranges = data.get("bucket_ranges")
    if not isinstance(raw_ranges, list) or not raw_ranges:
        raise ShardMapError(f"{source}: 'bucket_ranges' must be a non-empty list")
    ranges: list[BucketRange] = []
    for i, raw in enumerate(raw_ranges):
        where = f"{source}: bucket_ranges[{i}]"
        if not isinstance(raw, dict) or set(raw) != {"first", "last", "shard"}:
            raise ShardMapError(f"{where}: expected exactly first, last and shard")
        first, last, alias = raw["first"], raw["last"], raw["shard"]
        if not isinstance(first, int) or not isinstance(last, int) or first > last:
            raise ShardMapError(f"{where}: first and last must be integers with first <= last")
        if first < 0 or last >= bucket_count:
            raise ShardMapError(f"{where}: {first}..{last} is outside 0..{bucket_count - 1}")
        if alias not in shards:
            raise ShardMapError(f"{where}: unknown shard alias {alias!r}")
        ranges.append(BucketRange(first, last, alias))

    ranges.sort(key=lambda r: r.first)
    expected = 0
    for r in ranges:
        if r.first < expected:
            raise ShardMapError(f"{source}: bucket ranges overlap at bucket {r.first}")
        if r.first > expected:
            raise ShardMapError(f"{source}: buckets {expected}..{r.first - 1} are not mapped to any shard")
        expected = r.last + 1
    if expected != bucket_count:
        raise ShardMapError(f"{source}: buckets {expected}..{bucket_count - 1} are not mapped to any shard")
    # A shard without buckets is a server declared for `shard_add` and later moves.

    throwaway = data.get("throwaway", False)
    if not isinstance(throwaway, bool):
        raise ShardMapError(f"{source}: 'throwaway' must be true or false")
    by_bucket = tuple(r.alias for r in ranges for _ in range(r.first, r.last + 1))
    return ShardMap(control, shards, bucket_count, tuple(ranges), by_bucket, throwaway)


def load_shard_map(path: str | Path) -> ShardMap:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ShardMapError(f"shard map {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ShardMapError(f"{path}: not valid YAML: {exc}") from None
    return parse_shard_map(data, str(path))
