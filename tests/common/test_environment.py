"""Production refuses to start on a development default; every variable can come from a file."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wallet_project.environment import ConfigurationError, Environment

PRODUCTION_REQUIRED = {
    "SHARDWALLET_SECRET_KEY": "test-only-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJ",
    "SHARDWALLET_ALLOWED_HOSTS": "wallet.example.com",
    "SHARDWALLET_SHARDS_FILE": "tests/shards.test.yaml",
    "SHARDWALLET_REDIS_URL": "redis://:broker-password@10.0.0.5:6379/0",
}


def test_production_names_every_missing_variable_at_once() -> None:
    env = Environment({})
    assert env.production
    env.get("SHARDWALLET_SECRET_KEY", "dev")
    env.get("SHARDWALLET_REDIS_URL", "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigurationError) as raised:
        env.check()
    assert "SHARDWALLET_SECRET_KEY, SHARDWALLET_REDIS_URL must be set in production" in str(raised.value)


def test_development_and_test_take_the_defaults() -> None:
    for mode in ("development", "test"):
        env = Environment({"SHARDWALLET_ENV": mode})
        assert env.get("SHARDWALLET_SECRET_KEY", "dev-key") == "dev-key"
        env.check()


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="SHARDWALLET_ENV must be one of"):
        Environment({"SHARDWALLET_ENV": "prod"})


def test_a_value_may_come_from_a_file_and_an_unreadable_file_is_named(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("from-a-file\n")
    env = Environment({"SHARDWALLET_SECRET_KEY_FILE": str(secret)})
    assert env.get("SHARDWALLET_SECRET_KEY", "dev") == "from-a-file"
    env.check()
    env = Environment({"SHARDWALLET_SECRET_KEY_FILE": str(tmp_path / "absent")})
    env.get("SHARDWALLET_SECRET_KEY", "dev")
    with pytest.raises(ConfigurationError, match=r"SHARDWALLET_SECRET_KEY_FILE names .*absent, which cannot be read"):
        env.check()


def test_an_empty_value_counts_as_missing_in_production() -> None:
    env = Environment({"SHARDWALLET_SECRET_KEY": ""})
    env.get("SHARDWALLET_SECRET_KEY", "dev")
    with pytest.raises(ConfigurationError, match="SHARDWALLET_SECRET_KEY must be set"):
        env.check()


def _manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SHARDWALLET_", "DJANGO_SETTINGS_MODULE"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args], env={**base, **env}, capture_output=True, text=True, timeout=120
    )


def _manage_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _manage(["check"], env)


def test_manage_py_refuses_to_start_in_production_without_its_variables() -> None:
    result = _manage_check({})
    assert result.returncode == 1
    for name in PRODUCTION_REQUIRED:
        assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_is_refused_in_production_and_a_complete_environment_starts() -> None:
    faults = {"SHARDWALLET_CRASH_AT": "x:always", "SHARDWALLET_STOP_AT": "x:/tmp/y", "SHARDWALLET_HOLD_AT": "x:/tmp/y"}
    refused = _manage_check({**PRODUCTION_REQUIRED, "SHARDWALLET_DEBUG": "1", **faults})
    assert refused.returncode == 1
    assert "SHARDWALLET_DEBUG=1 is refused in production" in refused.stderr
    assert "SHARDWALLET_CRASH_AT (the fault tests' crash points) is refused in production" in refused.stderr
    assert "SHARDWALLET_STOP_AT (the fault tests' crash points) is refused in production" in refused.stderr
    assert "SHARDWALLET_HOLD_AT (the fault tests' crash points) is refused in production" in refused.stderr
    started = _manage_check(PRODUCTION_REQUIRED)
    assert started.returncode == 0, started.stderr


def test_the_audit_store_dsns_may_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "writer").write_text("http://writer:pw@clickhouse:8123\n")
    (tmp_path / "auditor").write_text("http://auditor:pw@clickhouse:8123\n")
    script = "from django.conf import settings; print(settings.CLICKHOUSE_URL, settings.CLICKHOUSE_AUDITOR_URL)"
    env = {
        **PRODUCTION_REQUIRED,
        "CLICKHOUSE_URL_FILE": str(tmp_path / "writer"),
        "SHARDWALLET_CLICKHOUSE_AUDITOR_URL_FILE": str(tmp_path / "auditor"),
    }
    result = _manage(["shell", "--verbosity", "0", "-c", script], env)
    assert result.stdout.split() == ["http://writer:pw@clickhouse:8123", "http://auditor:pw@clickhouse:8123"]
    result = _manage(["check"], {**env, "CLICKHOUSE_URL_FILE": str(tmp_path / "absent")})
    assert result.returncode == 1
    assert "CLICKHOUSE_URL_FILE names" in result.stderr


def test_the_auditors_file_is_a_file_of_accounts_not_the_inline_variable(tmp_path: Path) -> None:
    accounts = tmp_path / "auditors"
    accounts.write_text("alice:first-secret\n# the second one\nbob:second-secret\n")
    script = "from django.conf import settings; print(sorted(settings.AUDIT_AUDITORS))"
    env = {**PRODUCTION_REQUIRED, "SHARDWALLET_AUDIT_AUDITORS_FILE": str(accounts)}
    result = _manage(["shell", "--verbosity", "0", "-c", script], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['alice', 'bob']"


def test_a_short_or_placeholder_secret_key_is_refused_in_production() -> None:
    for weak in ("s3cret-key", "a" * 64, "django-insecure-" + "x1y2z3w4v5" * 5):
        result = _manage_check({**PRODUCTION_REQUIRED, "SHARDWALLET_SECRET_KEY": weak})
        assert result.returncode == 1, weak
        assert "SHARDWALLET_SECRET_KEY is refused: a secret key needs 50+ characters" in result.stderr
    old = {"SHARDWALLET_SECRET_KEY_FALLBACKS": "short-old-key"}
    result = _manage_check({**PRODUCTION_REQUIRED, **old})
    assert "SHARDWALLET_SECRET_KEY_FALLBACKS is refused" in result.stderr


def test_deploy_check_is_clean_in_production_behind_tls() -> None:
    """Django's own deployment checklist (`check --deploy`): nothing to say, HSTS and redirect on."""
    old_key = "old-key-being-rotated-out-0123456789-abcdefghijklmnopqrstuvwxyz"
    env = {**PRODUCTION_REQUIRED, "SHARDWALLET_BEHIND_TLS_PROXY": "1", "SHARDWALLET_SECRET_KEY_FALLBACKS": old_key}
    result = _manage(["check", "--deploy", "--fail-level", "WARNING"], env)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
    script = (
        "from django.conf import settings as s;"
        " print(s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, s.SECRET_KEY_FALLBACKS == [s.SECRET_KEY_FALLBACKS[0]],"
        " s.OPS_BIND, '^admin/' in s.SECURE_REDIRECT_EXEMPT)"
    )
    result = _manage(["shell", "--verbosity", "0", "-c", script], env)
    assert result.stdout.split() == ["True", "31536000", "True", "127.0.0.1:8001", "True"], result.stderr
    # Without TLS in front, the same check names what is missing.
    plain = _manage(["check", "--deploy", "--fail-level", "WARNING"], PRODUCTION_REQUIRED)
    assert plain.returncode == 1
    assert "security.W004" in plain.stderr
    assert "security.W008" in plain.stderr


def test_production_refuses_a_redis_without_a_password() -> None:
    result = _manage_check({**PRODUCTION_REQUIRED, "SHARDWALLET_REDIS_URL": "redis://10.0.0.5:6379/0"})
    assert result.returncode == 1
    assert "SHARDWALLET_REDIS_URL has no password" in result.stderr
    acl_user = _manage_check({**PRODUCTION_REQUIRED, "SHARDWALLET_REDIS_URL": "rediss://wallet:pw@10.0.0.5:6380/0"})
    assert acl_user.returncode == 0, acl_user.stderr


def test_the_test_stacks_redis_refuses_a_client_without_the_password(devstack: object) -> None:
    """The stack's Redis is started with the URL's password: without it, not even PING."""
    from urllib.parse import urlparse

    import redis
    from django.conf import settings

    url = urlparse(settings.REDIS_URL)
    assert url.password
    anonymous = redis.Redis(host=url.hostname, port=url.port, socket_connect_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    assert redis.Redis.from_url(settings.REDIS_URL).ping()


def test_the_operators_listener_answers_to_its_own_address() -> None:
    """Operators reach it through a tunnel to the host's loopback: its name is allowed, the public one too."""
    show = ["shell", "-c", "from django.conf import settings; print(','.join(settings.ALLOWED_HOSTS))"]
    default = _manage(show, PRODUCTION_REQUIRED)
    assert default.returncode == 0, default.stderr
    assert default.stdout.split()[-1] == "wallet.example.com,127.0.0.1,localhost"
    elsewhere = _manage(show, {**PRODUCTION_REQUIRED, "SHARDWALLET_OPS_BIND": "10.0.0.5:8001"})
    assert elsewhere.stdout.split()[-1] == "wallet.example.com,10.0.0.5"
    off = _manage(show, {**PRODUCTION_REQUIRED, "SHARDWALLET_OPS_BIND": "off"})
    assert off.stdout.split()[-1] == "wallet.example.com"
