"""One server's WAL archive and base backups with pgBackRest, and its restore to a point in time:
what `make pitr-probe` and the restore test run (docs/DEPLOY.md, "Restoring a shard").

The repository, logs, locks and the configuration live in one directory the postgres user
owns; the server archives with `archive_command` (`archive-push`), which `server_conf` gives.
pgBackRest talks to the server over a unix socket, so the server gets one in that directory
beside its TCP listener.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from apps.sharding.devstack import PostgresCluster, _apt_install, _running_as_root


class BackupError(RuntimeError):
    pass


@dataclass(frozen=True)
class BackupRepository:
    """pgBackRest's stanza for one server, under `directory`."""

    directory: Path
    cluster: PostgresCluster
    stanza: str = "shard"

    @property
    def config(self) -> Path:
        return self.directory / "pgbackrest.conf"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "sock"

    def write_config(self) -> None:
        """The configuration, and the directories it names, owned by the postgres user."""
        if shutil.which("pgbackrest") is None:
            _apt_install("pgbackrest")
        for name in ("repo", "log", "lock", "spool", "sock"):
            (self.directory / name).mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "[global]\n"
            f"repo1-path={self.directory / 'repo'}\nlog-path={self.directory / 'log'}\n"
            f"lock-path={self.directory / 'lock'}\nspool-path={self.directory / 'spool'}\n"
            "log-level-console=warn\nstart-fast=y\nrepo1-retention-full=2\n"
            f"[{self.stanza}]\npg1-path={self.cluster.data_dir}\npg1-port={self.cluster.server.port}\n"
            f"pg1-socket-path={self.socket_dir}\n"
        )
        if _running_as_root():
            for path in (self.directory, *self.directory.iterdir()):
                shutil.chown(path, "postgres", "postgres")

    def server_conf(self) -> str:
        """What the server's configuration needs: WAL archiving through pgBackRest, and the socket."""
        return (
            "archive_mode = on\n"
            f"archive_command = 'pgbackrest --config={self.config} --stanza={self.stanza} archive-push %p'\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """pgBackRest as the postgres user (it reads the data directory and writes the repository)."""
        argv = self.cluster.as_postgres(["pgbackrest", f"--config={self.config}", f"--stanza={self.stanza}", *args])
        result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise BackupError(f"pgbackrest {' '.join(args)}: {(result.stderr or result.stdout).strip()}")
        return result

    def create_stanza(self) -> None:
        self.run("stanza-create")

    def full_backup(self) -> float:
        """A full base backup; returns how long it took (s)."""
        started = time.monotonic()
        self.run("--type=full", "backup")
        # pgBackRest picks a backup that ended before a time target, in whole seconds.
        time.sleep(1.1)
        return time.monotonic() - started

    def archive_now(self) -> None:
        """Switch the WAL and wait until its segment is archived: what came before is in the archive."""
        self.run("check")

    def restore_to(self, target: str) -> float:
        """Stop the server, bring its data directory back to `target` (a timestamp with time
        zone) from the newest backup before it and the archive, and start it: it replays to
        the target and promotes (a new timeline). Returns how long it took (s)."""
        started = time.monotonic()
        if self.cluster.is_running():
            self.cluster.stop("immediate")
        self.run("--delta", "--type=time", f"--target={target}", "--target-action=promote", "restore")
        self.cluster.start()
        conninfo = self.cluster.server.conninfo(connect_timeout=5)
        deadline = time.monotonic() + 60
        with psycopg.connect(conninfo, autocommit=True) as conn:
            while conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
                if time.monotonic() > deadline:
                    raise BackupError(f"{self.cluster.server.alias} still in recovery 60 s after its restore")
                time.sleep(0.2)
        return time.monotonic() - started
