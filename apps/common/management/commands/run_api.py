from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.common.roles import api_argv, exec_role


class Command(BaseCommand):
    help = "Serve the HTTP API with gunicorn (the `api` role); replaces this process."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default=settings.API_BIND, help="address:port (SHARDWALLET_API_BIND)")
        parser.add_argument(
            "--ops-bind",
            default=settings.OPS_BIND,
            help="address:port of the admin, operations page and /metrics (SHARDWALLET_OPS_BIND; `off`: with the API)",
        )
        parser.add_argument("--workers", type=int, default=settings.API_WORKERS, help="SHARDWALLET_API_WORKERS")
        parser.add_argument("--threads", type=int, default=settings.API_THREADS, help="SHARDWALLET_API_THREADS")

    def handle(self, *args: Any, bind: str, ops_bind: str, workers: int, threads: int, **options: Any) -> None:
        ops_bind = "" if ops_bind == "off" else ops_bind
        # The listeners are told apart by port (apps.common.surfaces) in the served processes,
        # which read SHARDWALLET_OPS_BIND: it must say what gunicorn binds.
        os.environ["SHARDWALLET_OPS_BIND"] = ops_bind or "off"
        exec_role(api_argv(bind, workers, threads, ops_bind))
