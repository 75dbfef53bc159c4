"""Settings for the test suite: its own throw-away stack on other ports than `make run`."""

import os

os.environ["SHARDWALLET_ENV"] = "test"  # whatever the shell exported: these are the tests' settings


def _worker_stack() -> None:
    """The throw-away stack's variables, where none were exported. Under pytest-xdist each
    worker (gwN) runs a stack of its own: ports shifted by 10 per worker, its own directory,
    and a copy of the map under it (gw0 and a run without xdist keep the defaults). The
    values chosen here are marked, so that a worker started by a process that chose them
    for itself (the xdist controller) chooses again, and processes the tests start (workers,
    movers, the CDC) inherit their test's stack."""
    from pathlib import Path

    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    chosen_for, _, names = os.environ.get("SHARDWALLET_TEST_STACK_CHOSEN", "").partition(":")
    if names and chosen_for != worker:
        for name in names.split(","):
            os.environ.pop(name, None)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    shift = 10 * index
    root = Path(__file__).resolve().parent.parent
    stack_dir = "var/test" if not index else f"var/test-{worker}"
    shards_file = "tests/shards.test.yaml"
    if index and "SHARDWALLET_SHARDS_FILE" not in os.environ:
        import yaml

        layout = yaml.safe_load((root / shards_file).read_text())
        for server in (layout["control"], *layout["shards"]):
            server["port"] += shift
        (root / stack_dir).mkdir(parents=True, exist_ok=True)
        shards_file = f"{stack_dir}/shards.test.yaml"
        (root / shards_file).write_text(yaml.safe_dump(layout, sort_keys=False))
    defaults = {
        "SHARDWALLET_SHARDS_FILE": shards_file,
        "SHARDWALLET_DEVSTACK_DIR": stack_dir,
        # With a password, as production has one: every test talks to an authenticating Redis.
        "SHARDWALLET_REDIS_URL": f"redis://:test-only-redis-password@127.0.0.1:{26379 + shift}/0",
        "SHARDWALLET_AUDIT_HTTP_PORT": str(26123 + shift),
    }
    chosen = [name for name in defaults if name not in os.environ]
    for name in chosen:
        os.environ[name] = defaults[name]
    if chosen:
        os.environ["SHARDWALLET_TEST_STACK_CHOSEN"] = f"{worker}:{','.join(chosen)}"


_worker_stack()
# The test stack's auditor account: the CDC processes the tests start inherit it, and the
# tests' own clients (tests/audit/cdc.py) log in with it.
os.environ.setdefault("SHARDWALLET_AUDIT_AUDITORS", "auditor:test-only-auditor-secret")
# Fast retries and sweeps so fault tests finish in seconds (worker processes read these too).
os.environ.setdefault("SHARDWALLET_SAGA_RETRY_BASE_SECONDS", "0.2")
os.environ.setdefault("SHARDWALLET_SAGA_RETRY_MAX_SECONDS", "1")
os.environ.setdefault("SHARDWALLET_SAGA_STALLED_AFTER_SECONDS", "2")
os.environ.setdefault("SHARDWALLET_SAGA_SWEEP_INTERVAL_SECONDS", "1")
# The saga's steps run where a test puts them (its workers, or in-process calls), not in a
# background thread of the test process: the tests of drains in the API turn it on themselves.
os.environ.setdefault("SHARDWALLET_TRANSFER_DRAIN_IN_API", "0")


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
    # Marked like the stack's variables: an xdist worker chooses its own, under its own stack
    # directory, rather than the controller's under var/test, which the first worker to end
    # deletes with its stack while the others still write there.
    _chosen_for, _, _names = os.environ.get("SHARDWALLET_TEST_STACK_CHOSEN", "").partition(":")
    _worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    _names = _names if _chosen_for == _worker else ""
    os.environ["SHARDWALLET_TEST_STACK_CHOSEN"] = (
        f"{_worker}:{','.join(filter(None, [_names, 'PROMETHEUS_MULTIPROC_DIR']))}"
    )

from wallet_project.settings import *  # noqa: E402, F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests serve admin assets straight from the apps (no collectstatic run).
STATIC_ROOT = None  # type: ignore[assignment]  # (a Path in the base settings)
WHITENOISE_USE_FINDERS = True
# Tests read gauges right after changing what they count: no caching between scrapes (a test
# of the cache sets its own period).
METRICS_SHARD_GAUGES_SECONDS = 0.0
