"""Settings for the test suite: its own throw-away stack on other ports than `make run`."""

import os

os.environ["SHARDWALLET_ENV"] = "test"  # whatever the shell exported: these are the tests' settings
os.environ.setdefault("SHARDWALLET_SHARDS_FILE", "tests/shards.test.yaml")
os.environ.setdefault("SHARDWALLET_DEVSTACK_DIR", "var/test")
os.environ.setdefault("SHARDWALLET_REDIS_URL", "redis://127.0.0.1:26379/0")
os.environ.setdefault("SHARDWALLET_AUDIT_HTTP_PORT", "26123")
# The test stack's auditor account: the CDC processes the tests start inherit it, and the
# tests' own clients (tests/audit/cdc.py) log in with it.
os.environ.setdefault("SHARDWALLET_AUDIT_AUDITORS", "auditor:test-only-auditor-secret")
# Fast retries and sweeps so fault tests finish in seconds (worker processes read these too).
os.environ.setdefault("SHARDWALLET_SAGA_RETRY_BASE_SECONDS", "0.2")
os.environ.setdefault("SHARDWALLET_SAGA_RETRY_MAX_SECONDS", "1")
os.environ.setdefault("SHARDWALLET_SAGA_STALLED_AFTER_SECONDS", "2")
os.environ.setdefault("SHARDWALLET_SAGA_SWEEP_INTERVAL_SECONDS", "1")


def _metrics_dir() -> str:
    """This process's own multiprocess metrics directory, shared with the workers and servers
    it starts (they inherit the environment); set before prometheus_client is first imported.
    Directories left by processes that have exited are removed on the way."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    stack = Path(os.environ["SHARDWALLET_DEVSTACK_DIR"])
    stack = stack if stack.is_absolute() else root / stack
    for old in stack.glob("metrics-*"):
        try:
            os.kill(int(old.name.removeprefix("metrics-")), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except (ValueError, PermissionError):
            pass
    path = stack / f"metrics-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir()

from wallet_project.settings import *  # noqa: E402, F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests serve admin assets straight from the apps (no collectstatic run).
STATIC_ROOT = None  # type: ignore[assignment]  # (a Path in the base settings)
WHITENOISE_USE_FINDERS = True
