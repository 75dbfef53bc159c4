"""Run on the app host at start: each database server refuses a plain connection and serves
one that verifies its certificate (verify-full, the shard map's setting). Exits 1 otherwise."""

from __future__ import annotations

import os
import sys

import django
import psycopg


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wallet_project.settings")
    django.setup()
    from django.conf import settings

    failures = 0
    for server in settings.SHARD_MAP.servers:
        try:
            psycopg.connect(server.conninfo(sslmode="disable", connect_timeout=5)).close()
        except psycopg.OperationalError as exc:
            if "no pg_hba.conf entry" not in str(exc):  # refused for TLS's sake, not unreachable
                print(f"tls: {server.alias} {server.host}: unreachable: {str(exc).strip()[:200]}", flush=True)
                failures += 1
                continue
            where = f"{server.alias} {server.host}"
            print(f"tls: {where}: a plain connection is refused (no pg_hba.conf entry)", flush=True)
        else:
            print(f"tls: {server.alias} {server.host}: a plain connection was ACCEPTED", flush=True)
            failures += 1
        with psycopg.connect(server.conninfo(connect_timeout=5)) as conn:
            version = conn.execute("SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        mode = server.tls.get("sslmode")
        print(f"tls: {server.alias} {server.host}: sslmode={mode} connects over {version[0] if version else 'nothing'}")
        if mode != "verify-full" or not version:
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
