from __future__ import annotations

import faulthandler
import os
import signal
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit import store
from apps.audit.cdc import CdcProcess
from apps.audit.server import NO_AUDITORS


class Command(BaseCommand):
    help = "Stream every shard's changes into the audit store (ClickHouse) and serve auditors' read-only SQL."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--http-port", type=int, default=settings.AUDIT_HTTP_PORT, help="auditors' SQL endpoint (embedded mode)"
        )
        parser.add_argument("--shard", action="append", dest="shards", help="follow only this shard (repeatable)")

    def handle(self, *args: Any, http_port: int, shards: list[str] | None, **options: Any) -> None:
        if store.embedded() and not settings.AUDIT_AUDITORS:
            raise CommandError(NO_AUDITORS)  # before any slot or store is touched
        # Off the OLTP path: where the reader shares cores with the service (make run, the
        # bench), money movement goes first and the audit stream catches up when it can.
        if settings.AUDIT_CDC_NICE:
            os.nice(settings.AUDIT_CDC_NICE)
        process = CdcProcess(http_port=http_port, shards=shards)

        def stop(signum: int, frame: Any) -> None:
            process.stop.set()
            # A clean stop takes a second or two; should it hang, say where, and go.
            faulthandler.dump_traceback_later(20, exit=True)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        where = f"http://127.0.0.1:{process.http_port}" if process.http_port else store.server_address()
        self.stdout.write(
            f"cdc: following {', '.join(process.aliases)} into {process.board.backend} ({where}); ready",
        )
        self.stdout.flush()
        process.run()
        self.stdout.write("cdc: stopped")
        self.stdout.flush()
        sys.stderr.flush()
        # Everything is written (fsynced), confirmed and the status file final. Skip the
        # interpreter's teardown: chDB's engine shutdown at exit can stall for long.
        os._exit(0)
