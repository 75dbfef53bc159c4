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
import sys
import time

import psycopg

from apps.sharding.devstack import PostgresCluster
from apps.sharding.pgbackrest import BackupRepository
from apps.sharding.shardmap import DatabaseServer
from bench.stack import ROOT

DIR = ROOT / "var" / "pitr-probe"
PORT = 25532
ROWS = 100


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
    shutil.rmtree(DIR, ignore_errors=True)
    DIR.mkdir(parents=True)
    shutil.chown(DIR, "postgres", "postgres")
    server = DatabaseServer("shard_00", "127.0.0.1", PORT, "postgres", sslmode="disable")  # one machine's loopback
    cluster = PostgresCluster(server, DIR / "data")
    backups = BackupRepository(DIR / "backup", cluster)
    backups.directory.mkdir()
    backups.write_config()
    cluster.extra_conf = backups.server_conf()
    ok = False
    try:
        cluster.initialise()
        cluster.start()
        backups.create_stanza()
        conninfo = server.conninfo(connect_timeout=5)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE paid (n bigint PRIMARY KEY)")
        backup_s = backups.full_backup()
        insert(conninfo, range(1, ROWS + 1))
        with psycopg.connect(conninfo, autocommit=True) as conn:
            target = conn.execute("SELECT clock_timestamp()::text").fetchone()[0]  # type: ignore[index]
        time.sleep(1.1)
        insert(conninfo, range(ROWS + 1, 2 * ROWS + 1))
        backups.archive_now()
        cluster.stop()
        restore_s = backups.restore_to(target)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            rows = conn.execute("SELECT count(*), min(n), max(n) FROM paid").fetchone()
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
