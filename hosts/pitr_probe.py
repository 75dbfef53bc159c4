"""`make pitr-probe`: one database server archived and backed up with pgBackRest, then restored
to a point in time, to check that what was committed before that point is back and nothing after.

python -m hosts.pitr_probe [--keep]

A server on 127.0.0.1 under var/pitr-probe/ archives its WAL with `pgbackrest archive-push`
(`archive_mode = on`); a full backup is taken; 100 rows are committed, the time is noted,
100 more are committed and their WAL archived. The server is stopped, `pgbackrest restore
--type=time` brings its data directory back to the noted time (`--delta`: only the files that
differ), and it starts and promotes at that point. Exits 0 when exactly the first 100 rows are
there; prints how long the backup and the restore took.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from apps.sharding.devstack import PostgresCluster, _apt_install
from apps.sharding.shardmap import DatabaseServer
from bench.stack import ROOT

DIR = ROOT / "var" / "pitr-probe"
PORT = 25532
STANZA = "shard"
ROWS = 100


def pgbackrest(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pgBackRest as the postgres user (it reads the data directory and writes the repository)."""
    argv = ["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={config}", f"--stanza={STANZA}", *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(f"pgbackrest {' '.join(args)}: {(result.stderr or result.stdout).strip()}")
    return result


def write_config(cluster: PostgresCluster) -> Path:
    for name in ("repo", "log", "lock", "spool", "sock"):
        (DIR / name).mkdir(parents=True, exist_ok=True)
        shutil.chown(DIR / name, "postgres", "postgres")
    config = DIR / "pgbackrest.conf"
    config.write_text(
        "[global]\n"
        f"repo1-path={DIR / 'repo'}\nlog-path={DIR / 'log'}\nlock-path={DIR / 'lock'}\nspool-path={DIR / 'spool'}\n"
        "log-level-console=warn\nstart-fast=y\nrepo1-retention-full=2\n"
        f"[{STANZA}]\npg1-path={cluster.data_dir}\npg1-port={PORT}\npg1-socket-path={DIR / 'sock'}\n"
    )
    shutil.chown(config, "postgres", "postgres")
    return config


def insert(conninfo: str, numbers: range) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for n in numbers:
            conn.execute("INSERT INTO paid (n) VALUES (%s)", [n])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m hosts.pitr_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the server and the repository at the end")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("the probe runs PostgreSQL and pgBackRest as the postgres user: run it as root")
    if shutil.which("pgbackrest") is None:
        _apt_install("pgbackrest")
    shutil.rmtree(DIR, ignore_errors=True)
    DIR.mkdir(parents=True)
    shutil.chown(DIR, "postgres", "postgres")
    server = DatabaseServer("shard_00", "127.0.0.1", PORT, "postgres", sslmode="disable")  # one machine's loopback
    cluster = PostgresCluster(server, DIR / "data")
    config = write_config(cluster)
    cluster.extra_conf = (
        "archive_mode = on\n"
        f"archive_command = 'pgbackrest --config={config} --stanza={STANZA} archive-push %p'\n"
        f"unix_socket_directories = '{DIR / 'sock'}'\n"
    )
    ok = False
    try:
        cluster.initialise()
        cluster.start()
        pgbackrest(config, "stanza-create")
        conninfo = server.conninfo(connect_timeout=5)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE paid (n bigint PRIMARY KEY)")
        started = time.monotonic()
        pgbackrest(config, "--type=full", "backup")
        backup_s = time.monotonic() - started
        time.sleep(1.1)  # pgBackRest picks a backup that stopped before the target, in whole seconds
        insert(conninfo, range(1, ROWS + 1))
        with psycopg.connect(conninfo, autocommit=True) as conn:
            target = conn.execute("SELECT clock_timestamp()::text").fetchone()[0]  # type: ignore[index]
        time.sleep(1.1)
        insert(conninfo, range(ROWS + 1, 2 * ROWS + 1))
        pgbackrest(config, "check")  # switches the WAL and waits until the segment is archived
        cluster.stop()
        started = time.monotonic()
        pgbackrest(config, "--delta", "--type=time", f"--target={target}", "--target-action=promote", "restore")
        cluster.start()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,) and time.monotonic() < deadline:
                time.sleep(0.2)
            rows = conn.execute("SELECT count(*), min(n), max(n) FROM paid").fetchone()
        restore_s = time.monotonic() - started
        ok = rows == (ROWS, 1, ROWS)
        print(
            f"pitr-probe: full backup {backup_s:.1f} s; restored to {target} in {restore_s:.1f} s;"
            f" rows (count, min, max) {rows}, expected {(ROWS, 1, ROWS)}: {'PASS' if ok else 'FAIL'}"
        )
    finally:
        if not args.keep:
            if cluster.is_running():
                cluster.stop("immediate")
            shutil.rmtree(DIR, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
