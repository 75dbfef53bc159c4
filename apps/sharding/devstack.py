"""The local stack: one PostgreSQL server per shard (plus the control database) and a Redis.

Everything lives under the stack directory (git-ignored `var/<profile>/`), on the ports
named in the shard map, so `make run` and the test suite never touch each other's data
nor the machine's own servers. `up` is idempotent; `down` stops only servers whose data
lives in the stack directory (and a Redis only if this stack started it).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import redis

from apps.common.redis_auth import write_config
from apps.sharding.shardmap import SERVERS_SQL, DatabaseServer, ShardMap

log = logging.getLogger(__name__)

# Rewritten at every start (so a port changed in the shard map takes effect).
POSTGRES_CONF = """# written by shardwallet devstack at each start; edit the shard map instead
listen_addresses = '{host}'
port = {port}
unix_socket_directories = ''
max_connections = 300
wal_level = logical
max_replication_slots = 16
max_wal_senders = 16
# A slot whose reader is down may hold at most this much WAL; past it the slot is lost
# (the CDC then stops and says so; see docs/ARCHITECTURE.md, "Operating the audit stream").
max_slot_wal_keep_size = 2GB
shared_buffers = 128MB
fsync = on
synchronous_commit = on
log_min_messages = warning
autovacuum_naptime = 5s
"""


# A client that vanishes (its host cut off, or its socket closed by the client's own timeout
# while the FIN could not get through) must not keep its backend, its open transaction and
# its row locks for TCP's two hours: the server probes idle clients and checks, during a
# query, that its client is still there. `make test-hosts` (a partition) needs it; so does
# any deployment (docs/DEPLOY.md).
VANISHED_CLIENTS_CONF = """tcp_keepalives_idle = 5
tcp_keepalives_interval = 2
tcp_keepalives_count = 3
tcp_user_timeout = 5000
client_connection_check_interval = 2000
"""


class DevstackError(RuntimeError):
    """The local stack cannot be brought up; the message says what to do."""


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _apt_install(package: str) -> None:
    if not _running_as_root() or shutil.which("apt-get") is None:
        raise DevstackError(f"{package} is not installed; install it (e.g. apt-get install {package})")
    log.info("installing %s with apt-get", package)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)  # noqa: S607
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env)  # noqa: S607


def postgres_bindir() -> Path:
    """Directory of initdb/pg_ctl, installing Debian's PostgreSQL when none is present."""
    for _attempt in range(2):
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
        initdb = shutil.which("initdb")
        if initdb:
            candidates.insert(0, str(Path(os.path.realpath(initdb)).parent))
        for candidate in candidates:
            if (Path(candidate) / "pg_ctl").exists() and (Path(candidate) / "initdb").exists():
                return Path(candidate)
        _apt_install("postgresql")
    raise DevstackError("PostgreSQL server binaries (initdb, pg_ctl) not found")


def port_is_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class PostgresCluster:
    """One PostgreSQL server process whose data directory belongs to the stack."""

    server: DatabaseServer
    data_dir: Path
    # Appended to the server's configuration at each start (e.g. a test server's TLS).
    extra_conf: str = ""

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def as_postgres(self, args: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root: run its tools as the postgres user.
        if _running_as_root():
            return ["runuser", "-u", "postgres", "--", *args]
        return args

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = self.as_postgres([str(postgres_bindir() / tool), *args])
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise DevstackError(
                f"{tool} failed for {self.server.alias}: {result.stderr.strip() or result.stdout.strip()}"
                f" (log: {self.log_file})"
            )
        return result

    def is_initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def is_running(self) -> bool:
        if not self.is_initialised():
            return False
        return self._pg("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def initialise(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _running_as_root():
            shutil.chown(self.data_dir, "postgres", "postgres")
            self.data_dir.chmod(0o700)
        self._pg("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude = 'shardwallet.conf'\n")
        with (self.data_dir / "pg_hba.conf").open("a") as hba:
            # The change-data-capture reader streams the WAL over a replication connection.
            hba.write("host replication all 127.0.0.1/32 trust\n")

    def initialise_standby(self, primary: DatabaseServer) -> None:
        """A streaming standby of `primary`: its base backup, with standby.signal and the
        primary's conninfo written by pg_basebackup (-R). `start` then starts it as a standby."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _running_as_root():
            shutil.chown(self.data_dir, "postgres", "postgres")
            self.data_dir.chmod(0o700)
        self._pg(
            "pg_basebackup", "-h", primary.host, "-p", str(primary.port), "-U", "postgres",
            "-D", str(self.data_dir), "-R", "-X", "stream", "-c", "fast",
        )  # fmt: skip

    def promote(self) -> None:
        """End recovery: the standby takes writes (what a failover manager does to its chosen one)."""
        self._pg("pg_ctl", "promote", "-D", str(self.data_dir), "-w", "-t", "60")

    def start(self) -> None:
        if port_is_open(self.server.host, self.server.port):
            raise DevstackError(
                f"port {self.server.port} for {self.server.alias} is taken by another process; "
                f"free it or change the port in the shard map"
            )
        self.log_file.touch()
        own_conf = self.data_dir / "shardwallet.conf"
        own_conf.write_text(
            POSTGRES_CONF.format(host=self.server.host, port=self.server.port) + VANISHED_CLIENTS_CONF + self.extra_conf
        )
        if _running_as_root():
            shutil.chown(self.log_file, "postgres", "postgres")
            shutil.chown(own_conf, "postgres", "postgres")
        self._pg("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60")

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl's `fast` shutdown, or `immediate`: the postmaster and its children quit at once,
        as in a crash (recovery at the next start)."""
        self._pg("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60")

    def ensure_database(self) -> None:
        conninfo = f"host={self.server.host} port={self.server.port} user={self.server.user} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.server.name]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.server.name}"')


class Devstack:
    def __init__(self, shard_map: ShardMap, stack_dir: Path, redis_url: str) -> None:
        self.shard_map = shard_map
        self.stack_dir = stack_dir
        self.redis_url = redis_url

    @property
    def state_file(self) -> Path:
        return self.stack_dir / "state.json"

    def servers(self) -> list[DatabaseServer]:
        """The control database, the map file's shards and those added since."""
        servers = [self.shard_map.control, *(self.shard_map.shards[a] for a in self.shard_map.aliases)]
        known = {s.alias for s in servers}
        return servers + [s for s in self.registered_servers() if s.alias not in known]

    def clusters(self) -> list[PostgresCluster]:
        return [self.cluster(s) for s in self.servers() if self.runs(s)]

    @staticmethod
    def runs(server: DatabaseServer) -> bool:
        """Whether this stack starts the server itself: a local one, not a replicated cluster's
        (listed with `members`), whose members their failover manager runs."""
        return server.is_local and not server.members

    def cluster(self, server: DatabaseServer) -> PostgresCluster:
        return PostgresCluster(server, self.stack_dir / "pg" / server.alias)

    def registered_servers(self) -> list[DatabaseServer]:
        """Shards added with `shard_add` beyond the file's (the control database lists them), if it is up."""
        control = self.shard_map.control
        if not port_is_open(control.host, control.port):
            return []
        try:
            with psycopg.connect(control.conninfo(connect_timeout=2), autocommit=True) as conn:
                rows = conn.execute(SERVERS_SQL).fetchall()
        except psycopg.Error:
            return []  # not created or not migrated yet
        return [DatabaseServer.from_row(row) for row in rows]

    def ensure_server(self, server: DatabaseServer) -> str:
        """Create and start one server of the stack (a shard being added), with its database."""
        if server.members:
            return f"{server.alias}: a replicated cluster at {server.host}:{server.port}, run by its failover manager"
        cluster = self.cluster(server)
        if cluster.is_running():
            line = f"{server.alias}: running on port {server.port} (reused)"
        else:
            if not cluster.is_initialised():
                cluster.initialise()
            cluster.start()
            line = f"{server.alias}: started on port {server.port}"
        cluster.ensure_database()
        return line

    def _redis_endpoint(self) -> tuple[str, int]:
        url = urlparse(self.redis_url)
        return url.hostname or "127.0.0.1", url.port or 6379

    @property
    def redis_pidfile(self) -> Path:
        return self.stack_dir / "redis" / "redis.pid"

    def redis_answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.redis_url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def _start_redis(self) -> None:
        host, port = self._redis_endpoint()
        if host not in {"127.0.0.1", "localhost"}:
            raise DevstackError(f"Redis at {self.redis_url} does not answer and is not local")
        if shutil.which("redis-server") is None:
            _apt_install("redis-server")
        if port_is_open(host, port):
            raise DevstackError(f"port {port} is taken by something that is not Redis")
        redis_dir = self.redis_pidfile.parent
        redis_dir.mkdir(parents=True, exist_ok=True)
        # A password in the URL (the test stacks have one) becomes the server's: a client without it is refused.
        config = write_config(redis_dir / "redis.conf", self.redis_url)
        subprocess.run(
            [  # noqa: S607
                "redis-server", str(config), "--port", str(port), "--bind", host, "--daemonize", "yes",
                "--pidfile", str(self.redis_pidfile), "--dir", str(redis_dir),
                "--logfile", str(redis_dir / "redis.log"), "--save", "", "--appendonly", "no",
            ],
            check=True,
        )  # fmt: skip
        for _ in range(50):
            if self.redis_answers():
                return
            time.sleep(0.1)
        raise DevstackError(f"redis-server did not answer on port {port}; see {redis_dir / 'redis.log'}")

    def up(self) -> list[str]:
        """Create and start whatever is not running; return a line per component."""
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        report = []
        control = self.shard_map.control
        if self.runs(control):
            report.append(self.ensure_server(control))  # first: it lists the shards added later
        for server in self.servers():
            if server.alias != control.alias and server.is_local:
                report.append(self.ensure_server(server))
        if self.redis_answers():
            report.append(f"redis: answering at {self.redis_url} (reused)")
        else:
            self._start_redis()
            report.append(f"redis: started at {self.redis_url}")
        return report

    def _redis_pid(self) -> int | None:
        try:
            return int(self.redis_pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def down(self, purge: bool = False) -> list[str]:
        report = []
        for cluster in self.clusters():
            if cluster.is_running():
                cluster.stop()
                report.append(f"{cluster.server.alias}: stopped")
        pid = self._redis_pid()
        if pid is not None:
            try:
                os.kill(pid, 15)
                report.append("redis: stopped")
            except ProcessLookupError:
                pass
            _wait_gone(pid)  # it still writes into its directory while it shuts down
            self.redis_pidfile.unlink(missing_ok=True)
        if purge and self.stack_dir.exists():
            shutil.rmtree(self.stack_dir)
            report.append(f"removed {self.stack_dir}")
        return report

    def status(self) -> dict[str, str]:
        status = {}
        for cluster in self.clusters():
            state = "running" if cluster.is_running() else "stopped"
            status[cluster.server.alias] = f"{state} (port {cluster.server.port}, {cluster.data_dir})"
        owner = "started by this stack" if self._redis_pid() else "external"
        status["redis"] = f"{'answering' if self.redis_answers() else 'down'} ({self.redis_url}, {owner})"
        return status

    def foreign_servers(self) -> list[str]:
        """Servers this stack would use that are not its own: a remote one, or a port answered
        by a PostgreSQL whose data lives elsewhere or a Redis this stack did not start. The test
        suite refuses to run (it empties tables and flushes Redis) while there is any."""
        problems = []
        for server in self.shard_map.servers:
            if not server.is_local:
                problems.append(f"{server.alias} at {server.host}:{server.port} is not a local server of this stack")
        for cluster in self.clusters():
            if not port_is_open(cluster.server.host, cluster.server.port):
                continue  # not running: the stack starts its own there
            data_dir = self._data_directory(cluster.server)
            if data_dir is None or Path(data_dir).resolve() != cluster.data_dir.resolve():
                problems.append(
                    f"{cluster.server.alias}: port {cluster.server.port} is served by a PostgreSQL with its data at"
                    f" {data_dir or 'an unknown place'}, not {cluster.data_dir}"
                )
        if self.redis_answers():
            pid = redis.Redis.from_url(self.redis_url, socket_connect_timeout=0.5).info("server").get("process_id")
            if pid is None or pid != self._redis_pid():
                problems.append(f"Redis at {self.redis_url} was not started by this stack ({self.redis_pidfile})")
        return problems

    @staticmethod
    def _data_directory(server: DatabaseServer) -> str | None:
        conninfo = f"host={server.host} port={server.port} user={server.user} dbname=postgres"
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.Error:
            return None
        return row[0] if row else None

    def write_state(self) -> None:
        self.state_file.write_text(json.dumps(self.status(), indent=2))


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Until the process has exited (or is a zombie nobody reaps), at most `timeout` seconds."""
    from apps.sharding.lease import kernel_state

    deadline = time.monotonic() + timeout
    while kernel_state(pid) not in ("", "Z", "X") and time.monotonic() < deadline:
        time.sleep(0.05)
