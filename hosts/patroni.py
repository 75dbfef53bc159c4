"""A database as a Patroni cluster over etcd: what each etcd member and each Patroni member runs.

Patroni (PyPI's, run as the postgres user: PostgreSQL refuses root) bootstraps the
first member with initdb, clones the others from it, keeps one synchronous standby
(`synchronous_mode` with `synchronous_mode_strict`: a commit is acknowledged only once the
standby has it, and with no standby writes wait rather than risk a loss) and promotes that
standby when the leader's key in etcd expires. The service finds the primary by itself: the
shard map lists every member (`members`) and libpq keeps the one that takes writes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apps.sharding.devstack import POSTGRES_CONF, VANISHED_CLIENTS_CONF, _apt_install, postgres_bindir

ETCD = "/usr/bin/etcd"  # Debian's etcd-server
# PyPI's Patroni (pinned with hashes in hosts/patroni-requirements.txt) in a virtualenv of the
# system's Python under /opt, which the postgres user can read. Not Debian 12's 3.0.2: after a
# partition healed it could overwrite the new leader's key in etcd and promote itself too.
REQUIREMENTS = Path(__file__).with_name("patroni-requirements.txt")
VENV = Path("/opt/shardwallet-patroni") / hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
PATRONI = str(VENV / "bin" / "patroni")
# Failure detection: the leader's key lives TTL seconds unless renewed; Patroni's loop runs
# every LOOP_WAIT seconds and retries the DCS and PostgreSQL for RETRY_TIMEOUT. Patroni's rule:
# loop_wait + 2 * retry_timeout <= ttl. The smallest TTL Patroni takes is 20 s.
TTL = 20
LOOP_WAIT = 2
RETRY_TIMEOUT = 9
REPLICATOR = "replicator"


def install_patroni() -> None:
    """Debian's etcd and Patroni's virtualenv, each if missing."""
    if not Path(ETCD).exists():
        _apt_install("etcd-server")
    done = VENV / ".installed"  # written last: a half-made virtualenv is made again
    if done.exists():
        return
    shutil.rmtree(VENV, ignore_errors=True)
    if subprocess.run(["/usr/bin/python3", "-m", "ensurepip", "--version"], capture_output=True).returncode != 0:
        _apt_install("python3-venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True)  # noqa: S603
    pip = [str(VENV / "bin" / "pip"), "install", "-q", "--require-hashes", "-r", str(REQUIREMENTS)]
    subprocess.run(pip, check=True)  # noqa: S603
    done.touch()


@dataclass(frozen=True)
class EtcdMember:
    name: str
    address: str
    client_port: int
    peer_port: int
    data_dir: Path

    @property
    def client_url(self) -> str:
        return f"http://{self.address}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.address}:{self.peer_port}"


def etcd_argv(member: EtcdMember, cluster: list[EtcdMember], token: str) -> list[str]:
    """The member's command line: a fresh cluster of `cluster`, plain HTTP on a private network."""
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster)
    return [
        ETCD, "--name", member.name, "--data-dir", str(member.data_dir),
        "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
        "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
        "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", token,
        # Short elections: a lost etcd member is replaced in about a second, well inside Patroni's TTL.
        "--heartbeat-interval", "100", "--election-timeout", "1000",
    ]  # fmt: skip


@dataclass(frozen=True)
class PatroniMember:
    scope: str  # the cluster: the shard's alias, or "control"
    name: str
    address: str
    pg_port: int
    api_port: int
    data_dir: Path
    config_file: Path

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.pg_port}"

    @property
    def api_endpoint(self) -> str:
        return f"{self.address}:{self.api_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_endpoint}"


def _server_parameters() -> dict[str, Any]:
    """The shards' own server settings (apps.sharding.devstack), vanished clients' included, for Patroni to manage."""
    parameters: dict[str, Any] = {}
    for line in (POSTGRES_CONF + VANISHED_CLIENTS_CONF).splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.strip().startswith("#") and key.strip() not in ("listen_addresses", "port"):
            parameters[key.strip()] = value.strip().strip("'")
    parameters.pop("unix_socket_directories", None)
    return parameters


@dataclass(frozen=True)
class MemberTLS:
    """The member's certificate and key (for its server) and the CA it verifies the others by."""

    cert: Path
    key: Path
    ca: Path


# Run by Patroni before it stops the server (`before_stop`: a switchover's demotion, a restart).
# A clean stop waits until every WAL sender has sent all WAL and its client has confirmed it; for
# a logical one (the CDC's, a move's subscription) that means decoding and delivering everything
# its client had not read yet. A CDC tens of MB behind kept a switchover's primary refusing every
# connection for 50-60 s (`make test-hosts` (d)). Ended first, their slots keep their confirmed
# positions and the clients go on from them on the next primary. Physical senders (the standbys)
# still get every WAL record, so no standby is left behind by the switchover.
END_LOGICAL_SENDERS_SQL = (
    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
    " WHERE slot_type = 'logical' AND active_pid IS NOT NULL"
)


def before_stop_passfile(member: PatroniMember) -> Path:
    """The superuser's password for the `before_stop` command (written by `write_config`, mode 0600)."""
    return member.data_dir.parent / f"{member.name}.before-stop.pgpass"


def before_stop_command(member: PatroniMember, client: dict[str, str], *, socket_dir: str | None) -> str:
    """`psql` ending the logical WAL senders, as the superuser: over the member's unix socket, or
    over TCP with the members' TLS settings (`client`) where it has none."""
    host = socket_dir or member.address
    conninfo = " ".join(
        f"{k}={v}" for k, v in {"host": host, "port": member.pg_port, "user": "postgres", "dbname": "postgres",
                                "passfile": before_stop_passfile(member), "connect_timeout": 5, **client}.items()
    )  # fmt: skip
    return f"{postgres_bindir() / 'psql'} -X -q -d '{conninfo}' -c \"{END_LOGICAL_SENDERS_SQL}\""


def patroni_config(
    member: PatroniMember,
    etcd: list[EtcdMember],
    *,
    password: str,
    hba: list[str],
    tls: MemberTLS | None = None,
    rest_auth: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Patroni's configuration for one member (YAML-able).

    With `tls`, the server takes TLS only (as `hba` says) and every connection Patroni makes
    (its own, a standby's replication, pg_rewind's) verifies the other member's certificate;
    without, the server also listens on a unix socket next to its data directory (the probe).
    With `rest_auth` (user, password), the REST API's changes (configuration, switchover,
    restart) ask for it; its reads stay open to the members, which ask each other's state."""
    parameters = {
        **_server_parameters(),
        "wal_log_hints": "on",  # pg_rewind can bring an old primary back as a standby
        "hot_standby": "on",
        # A standby's copy of a permanent logical slot (the CDC's) is safe to stream from after
        # a promotion only if the primary kept the catalog rows its decoding needs.
        "hot_standby_feedback": "on",
    }
    # The member's own settings (its files' paths), kept out of the cluster-wide ones in etcd.
    local: dict[str, str] = {}
    client: dict[str, str] = {}
    if tls is None:
        local["unix_socket_directories"] = str(member.data_dir.parent / f"{member.name}.sock")
    else:
        # No socket file: Patroni reaches its own server over TCP, at `listen`.
        local = {"unix_socket_directories": "", "ssl": "on", "ssl_cert_file": str(tls.cert),
                 "ssl_key_file": str(tls.key)}  # fmt: skip
        client = {"sslmode": "verify-full", "sslrootcert": str(tls.ca)}
    return {
        "scope": member.scope,
        "name": member.name,
        "restapi": {
            "listen": member.api_endpoint,
            "connect_address": member.api_endpoint,
            **({"authentication": {"username": rest_auth[0], "password": rest_auth[1]}} if rest_auth else {}),
        },
        "etcd3": {"hosts": [f"{m.address}:{m.client_port}" for m in etcd]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL,
                "loop_wait": LOOP_WAIT,
                "retry_timeout": RETRY_TIMEOUT,
                "synchronous_mode": True,
                "synchronous_mode_strict": True,
                # Patroni drops every slot it does not manage: the moves' subscriptions and the
                # CDC's (until it is made permanent, `ReplicatedDatabase.keep_slot`) are ours.
                "ignore_slots": [{"type": "logical", "plugin": "pgoutput"}],
                "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": parameters},
            },
            "initdb": [{"encoding": "UTF8"}, {"username": "postgres"}],
        },
        "postgresql": {
            "listen": member.endpoint,
            "connect_address": member.endpoint,
            "data_dir": str(member.data_dir),
            "bin_dir": str(postgres_bindir()),
            "pgpass": str(member.data_dir.parent / f"{member.name}.pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": password, **client},
                "replication": {"username": REPLICATOR, "password": password, **client},
                "rewind": {"username": "postgres", "password": password, **client},
            },
            "parameters": local,
            "pg_hba": hba,
            "before_stop": before_stop_command(member, client, socket_dir=local["unix_socket_directories"] or None),
        },
    }


def permanent_slot(slot: str, database: str) -> dict[str, Any]:
    """The configuration change (`PATCH /config`, as `patronictl edit-config`) that makes a logical
    slot permanent: Patroni copies it to the standbys and advances their copies."""
    return {"slots": {slot: {"type": "logical", "database": database, "plugin": "pgoutput"}}}


def slot_copy_safe(log: Path, slot: str) -> bool:
    """Whether a standby's Patroni log says its copy of `slot` is safe to stream from after a failover."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return False
    return f"Logical slot {slot} is safe to be used after a failover" in text


def write_config(member: PatroniMember, config: dict[str, Any]) -> None:
    """The member's YAML (it holds passwords: the postgres user's own, mode 0600)."""
    member.config_file.parent.mkdir(parents=True, exist_ok=True)
    member.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    member.config_file.chmod(0o600)
    shutil.chown(member.config_file, "postgres", "postgres")
    member.data_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(member.data_dir.parent, "postgres", "postgres")
    password = config["postgresql"]["authentication"]["superuser"]["password"]
    passfile = before_stop_passfile(member)
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    passfile.write_text(f"*:*:*:postgres:{escaped}\n")
    passfile.chmod(0o600)
    shutil.chown(passfile, "postgres", "postgres")


def patroni_argv(member: PatroniMember) -> list[str]:
    return ["runuser", "-u", "postgres", "--", PATRONI, str(member.config_file)]


Reader = Callable[["PatroniMember", str], "dict[str, Any] | None"]


def rest_get(member: PatroniMember, path: str, timeout: float = 2) -> dict[str, Any] | None:
    """A GET of Patroni's REST API on the member from this process; None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{member.api_url}{path}", timeout=timeout) as answer:  # noqa: S310 - our URL
            return dict(json.loads(answer.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def is_primary(state: dict[str, Any] | None) -> bool:
    """Whether a member's own state (GET /patroni) says it leads (Patroni 3 says "master", 4 "primary")."""
    return (state or {}).get("role") in ("master", "primary")


def sync_standby_names(cluster: dict[str, Any] | None) -> list[str]:
    """The synchronous standbys of the cluster as its leader sees it (GET /cluster)."""
    return [c.get("name", "") for c in (cluster or {}).get("members", []) if c.get("role") == "sync_standby"]


def leading_member(members: list[PatroniMember], read: Reader = rest_get) -> PatroniMember | None:
    """The first of `members` that says it leads, if one does."""
    return next((m for m in members if is_primary(read(m, "/patroni"))), None)


def postmaster_pid(member: PatroniMember) -> int:
    return int((member.data_dir / "postmaster.pid").read_text().split()[0])


def wait_for_roles(
    members: list[PatroniMember], timeout: float = 120, read: Reader = rest_get
) -> tuple[PatroniMember, list[PatroniMember]]:
    """Until one member leads and every other one streams as its synchronous standby or replica.

    `read` asks a member's REST API for a path (GET /patroni: its role and state; GET /cluster:
    the cluster as it sees it); by default from this process."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        seen = {m.name: read(m, "/patroni") for m in members}
        leaders = [m for m in members if is_primary(seen[m.name])]
        running = all((seen[m.name] or {}).get("state") in ("running", "streaming") for m in members)
        if len(leaders) == 1 and running and sync_standby_names(read(leaders[0], "/cluster")):
            return leaders[0], [m for m in members if m is not leaders[0]]
        time.sleep(0.5)
    raise TimeoutError(f"no leader with a synchronous standby after {timeout:.0f}s: {seen}")
