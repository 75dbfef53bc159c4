"""The database hosts' PostgreSQL servers, the Redis host's server and the slow shard's relay.

Each PostgreSQL server runs inside its host's namespace and listens on that host's address
only: no unix socket (the filesystem is shared, so a socket file would be a path between
hosts that the network does not see), passwords (scram-sha-256) for the hosts' subnet, and
replication connections from the app host (the CDC) and from the host itself (the relay
forwards the app's connections from there).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from apps.common.redis_auth import write_config
from apps.sharding.devstack import (
    POSTGRES_CONF,
    VANISHED_CLIENTS_CONF,
    DevstackError,
    PostgresCluster,
    postgres_bindir,
)
from apps.sharding.shardmap import DatabaseServer
from chaos.supervisor import Program
from hosts import net
from hosts.layout import (
    APP,
    DATABASE_HOSTS,
    LOGS,
    PG_DIR,
    POSTGRES_PORT,
    REDIS,
    REDIS_MASTER_NAME,
    REDIS_PORT,
    RELAY_DELAY_FILE,
    RELAY_PORT,
    SECRETS,
    SENTINEL_PORT,
    SUBNET,
    Host,
)
from hosts.tls import SERVER_TLS_CONF, Authority, install

PG_PASSWORD_FILE = SECRETS / "pg_password"


def made_once(path: Path) -> str:
    """A random secret kept in `path` (owner-only), made on this run's first use."""
    if not path.exists():
        SECRETS.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def pg_password() -> str:
    """The postgres user's password on every database host, made once per run."""
    return made_once(PG_PASSWORD_FILE)


TLS_DIR = SECRETS / "tls"
CA_CERT = TLS_DIR / "ca.crt"


def make_certificates() -> None:
    """A throw-away CA for this run, and a certificate for each database host's address."""
    authority = Authority.make(TLS_DIR)
    for database_host in DATABASE_HOSTS:
        authority.issue(TLS_DIR, database_host.name, ip=database_host.address)


def hba(host: Host) -> str:
    """TLS only (`hostssl`): a plain connection finds no entry and is refused."""
    return (
        "# written by hosts/servers.py: TCP from the hosts' subnet only, over TLS, with passwords; no unix socket\n"
        f"hostssl all all {SUBNET} scram-sha-256\n"
        "# the CDC streams the WAL over a replication connection, from the app host or through a relay here\n"
        f"hostssl replication all {APP.address}/32 scram-sha-256\n"
        f"hostssl replication all {host.address}/32 scram-sha-256\n"
    )


@dataclass
class HostPostgres(PostgresCluster):
    """A PostgreSQL server run inside its host's namespace; data under var/hosts/pg/<host>."""

    host: Host | None = None
    # VANISHED_CLIENTS_CONF; without it (`python -m hosts --scenarios b --no-server-keepalives`)
    # scenario (b) ends with transfers blocked behind an orphaned transaction's row locks.
    keepalives: bool = True

    @classmethod
    def on(cls, host: Host, database: str, *, keepalives: bool = True) -> HostPostgres:
        server = DatabaseServer(host.name, host.address, POSTGRES_PORT, database, "postgres", pg_password())
        return cls(server, PG_DIR / host.name, host=host, keepalives=keepalives)

    def as_postgres(self, args: list[str]) -> list[str]:
        assert self.host is not None  # noqa: S101 - set by `on`
        return net.on(self.host, ["runuser", "-u", "postgres", "--", *args])

    def initialise(self) -> None:
        assert self.host is not None  # noqa: S101
        self.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postgres", "postgres")
        self.data_dir.chmod(0o700)
        # initdb reads the password from a file the postgres user can read, removed right after.
        pwfile = self.data_dir.parent / f".{self.host.name}.pw"
        pwfile.write_text(pg_password() + "\n")
        pwfile.chmod(0o600)
        shutil.chown(pwfile, "postgres", "postgres")
        try:
            self._pg(
                "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=scram-sha-256",
                f"--pwfile={pwfile}", "-E", "UTF8",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude = 'shardwallet.conf'\n")
        (self.data_dir / "pg_hba.conf").write_text(hba(self.host))
        install(self.data_dir, TLS_DIR / f"{self.host.name}.crt", TLS_DIR / f"{self.host.name}.key")

    def start(self) -> None:
        # The devstack's settings (listen_addresses = this host's address only, no unix socket,
        # wal_level = logical...); no port probe from here: this process is not on the hosts' network.
        self.log_file.touch()
        own_conf = self.data_dir / "shardwallet.conf"
        conf = POSTGRES_CONF.format(host=self.server.host, port=self.server.port)
        own_conf.write_text(conf + (VANISHED_CLIENTS_CONF if self.keepalives else "") + SERVER_TLS_CONF)
        for path in (self.log_file, own_conf):
            shutil.chown(path, "postgres", "postgres")
        self._pg("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60")

    def ensure_database(self) -> None:
        """CREATE DATABASE over TCP to its own address, from its own host, with the password."""
        assert self.host is not None  # noqa: S101
        argv = net.on(
            self.host,
            [
                "runuser", "-u", "postgres", "--", str(postgres_bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                "-h", self.server.host, "-p", str(self.server.port), "-U", "postgres", "-d", "postgres",
                "-c", f'CREATE DATABASE "{self.server.name}"',
            ],
        )  # fmt: skip
        env = {
            **os.environ,
            "PGPASSWORD": self.server.password,
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(CA_CERT),
        }
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)  # noqa: S603
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise DevstackError(f"creating {self.server.name} on {self.host.name}: {result.stderr.strip()}")


REDIS_PASSWORD_FILE = SECRETS / "redis_password"


def redis_url() -> str:
    """The broker's URL with its ACL user and a password made once per run (as production has)."""
    return f"redis://shardwallet:{made_once(REDIS_PASSWORD_FILE)}@{REDIS.address}:{REDIS_PORT}/0"


SENTINEL_PASSWORD_FILE = SECRETS / "sentinel_password"


def sentinel_password() -> str:
    """The sentinels' own password (`requirepass`), made once per run."""
    return made_once(SENTINEL_PASSWORD_FILE)


def redis_program(env: dict[str, str], on: Host = REDIS) -> Program:
    """Redis on its own host's address only (no persistence: the broker is not the truth), with
    the URL's ACL user; the passwordless default user is off. Every server replicates as that
    user (a master becomes a replica after a failover); the one on `redis_b` starts as the replica."""
    workdir = LOGS.parent / on.name
    config = write_config(workdir / "redis.conf", redis_url())
    url = urlparse(redis_url())
    with config.open("a") as conf:
        conf.write(f"masteruser {url.username}\nmasterauth {url.password}\n")
        if on != REDIS:
            conf.write(f"replicaof {REDIS.address} {REDIS_PORT}\n")
    argv = [
        "redis-server", str(config), "--bind", on.address, "--port", str(REDIS_PORT), "--protected-mode", "no",
        "--save", "", "--appendonly", "no", "--dir", str(workdir),
    ]  # fmt: skip
    return Program(on.name, net.on(on, argv), env, LOGS / f"{on.name}.log")


def sentinel_program(on: Host, env: dict[str, str]) -> Program:
    """A sentinel on `on`'s address: it watches the master (as the broker's ACL user), agrees with
    the two others that it is down after 5 s without an answer, and promotes the replica."""
    workdir = LOGS.parent / "sentinel" / on.name
    workdir.mkdir(parents=True, exist_ok=True)
    url = urlparse(redis_url())
    password = sentinel_password()
    lines = [
        f"port {SENTINEL_PORT}", f"bind {on.address}", "protected-mode no", f"dir {workdir}",
        f"requirepass {password}", f"sentinel sentinel-pass {password}",
        f"sentinel monitor {REDIS_MASTER_NAME} {REDIS.address} {REDIS_PORT} 2",
        f"sentinel auth-user {REDIS_MASTER_NAME} {url.username}",
        f"sentinel auth-pass {REDIS_MASTER_NAME} {url.password}",
        f"sentinel down-after-milliseconds {REDIS_MASTER_NAME} 5000",
        f"sentinel failover-timeout {REDIS_MASTER_NAME} 60000",
    ]  # fmt: skip
    config = workdir / "sentinel.conf"  # rewritten by the sentinel as it learns; it holds passwords
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(f"{line}\n" for line in lines))
    argv = ["redis-server", str(config), "--sentinel"]
    return Program(f"sentinel-{on.name}", net.on(on, argv), env, LOGS / f"sentinel-{on.name}.log")


def relay_program(host: Host, env: dict[str, str]) -> Program:
    """The delaying relay on the slow shard's host: its address, RELAY_PORT -> its PostgreSQL."""
    argv = [
        sys.executable, "-m", "hosts.relay", "--listen", f"{host.address}:{RELAY_PORT}",
        "--target", f"{host.address}:{POSTGRES_PORT}", "--delay-file", str(RELAY_DELAY_FILE),
    ]  # fmt: skip
    return Program("relay", net.on(host, argv), env, LOGS / "relay.log")


def set_relay_delay(milliseconds: float) -> None:
    """Each direction's delay; the relay reads the file within a fraction of a second."""
    tmp = Path(f"{RELAY_DELAY_FILE}.tmp")
    tmp.write_text(f"{milliseconds:g}\n")
    tmp.replace(RELAY_DELAY_FILE)
