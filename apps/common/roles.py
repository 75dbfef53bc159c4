"""The service's long-running roles as processes: what `manage.py run_api|run_worker|run_beat` exec.

The container image (docker/entrypoint.sh), the supervisord configuration, `make run`
(`manage.py serve`) and the separate-hosts test (`make test-hosts`) all start the same
commands, so what the tests run is what is deployed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from django.conf import settings

CELERY = [sys.executable, "-m", "celery", "-A", "wallet_project"]


def api_argv(bind: str, workers: int, threads: int, ops_bind: str = "") -> list[str]:
    """gunicorn on the API's address and, given one, the operators' (apps.common.surfaces)."""
    return [
        sys.executable, "-m", "gunicorn", "wallet_project.wsgi", "--bind", bind,
        *(["--bind", ops_bind] if ops_bind else []),
        "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
        "--backlog", "2048", "--access-logfile", "-", "--graceful-timeout", "5",
        # gunicorn's control interface (a unix socket in ~/.gunicorn, one path for every server
        # on the host) is not used: servers started side by side would contend for it.
        "--no-control-socket",
    ]  # fmt: skip


def worker_argv(concurrency: int, name: str | None, log_level: str, queues: str | None = None) -> list[str]:
    """A saga worker consumes Celery's default queue; `queues="webhooks"` makes the webhook worker."""
    return [
        *CELERY, "worker", "-l", log_level, "-c", str(concurrency), "--without-gossip", "--without-mingle",
        *(["-n", name] if name else []), *(["-Q", queues] if queues else []),
    ]  # fmt: skip


def beat_argv(schedule: Path, log_level: str) -> list[str]:
    return [*CELERY, "beat", "-l", log_level, "-s", str(schedule)]


def exec_role(argv: list[str]) -> None:
    """Replace this process with the role's server, so signals from a supervisor reach it directly.

    gunicorn and Celery run several processes: each writes its metrics files into
    PROMETHEUS_MULTIPROC_DIR, and /metrics sums them. Without one set, this host's own is used.
    """
    env = dict(os.environ)
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        Path(settings.METRICS_DIR).mkdir(parents=True, exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(settings.METRICS_DIR)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)  # noqa: S606 - our own argv
