"""Settings for the test suite: its own throw-away stack on other ports than `make run`."""

import os

os.environ.setdefault("SHARDWALLET_SHARDS_FILE", "tests/shards.test.yaml")
os.environ.setdefault("SHARDWALLET_DEVSTACK_DIR", "var/test")
os.environ.setdefault("SHARDWALLET_REDIS_URL", "redis://127.0.0.1:26379/0")
os.environ.setdefault("SHARDWALLET_AUDIT_HTTP_PORT", "26123")
# Fast retries and sweeps so fault tests finish in seconds (worker processes read these too).
os.environ.setdefault("SHARDWALLET_SAGA_RETRY_BASE_SECONDS", "0.2")
os.environ.setdefault("SHARDWALLET_SAGA_RETRY_MAX_SECONDS", "1")
os.environ.setdefault("SHARDWALLET_SAGA_STALLED_AFTER_SECONDS", "2")
os.environ.setdefault("SHARDWALLET_SAGA_SWEEP_INTERVAL_SECONDS", "1")

from wallet_project.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests serve admin assets straight from the apps (no collectstatic run).
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
