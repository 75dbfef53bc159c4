"""The container image, the compose file and the supervisord configuration, checked here.

No machine of ours runs a container engine, so what can be checked without one is: hadolint
on the Dockerfile, shellcheck on the shell scripts, the compose file against the compose-spec
schema and our own references (services, volumes, secrets, variables, roles, healthchecks),
the roles' environment against the production settings, and supervisord's own parser on its
configuration. Nothing here touches a database (no `db` fixture): `make lint-deploy` runs
these alone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from secrets import token_hex
from typing import Any

import pytest
import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
CLICKHOUSE_INIT = DOCKER / "clickhouse" / "initdb" / "10-shardwallet-users.sh"
SUPERVISOR_CONF = ROOT / "deploy" / "supervisor" / "shardwallet.conf"
BIN = Path(sys.executable).parent

# The roles the image and supervisord must offer, and the long-running ones among them.
ROLES = {"api", "worker", "beat", "cdc", "migrate", "shell"}
LONG_RUNNING_ROLES = {"api", "worker", "webhooks", "beat", "cdc"}
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}; $$ is a literal $.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {BIN}: `make venv` (it is pinned in requirements.in)")
    return str(path)


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def entrypoint_roles() -> dict[str, list[str]]:
    """Each role of docker/entrypoint.sh's `case` and the command line it execs."""
    arms = re.findall(r"^\s*([a-z][a-z|\s-]*)\)\s*exec\s+(.+?)\s*;;", ENTRYPOINT.read_text(), re.MULTILINE)
    return {role.strip(): command.split() for pattern, command in arms for role in pattern.split("|")}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def app_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the application image (built from docker/Dockerfile)."""
    return {
        name: service
        for name, service in spec["services"].items()
        if service.get("build", {}).get("dockerfile") == "docker/Dockerfile"
    }


def long_running(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in spec["services"].items() if s.get("restart") != "no"}


# The image.


def test_dockerfile_passes_hadolint() -> None:
    result = run(tool("hadolint"), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_refuses_an_unpinned_base_image(tmp_path: Path) -> None:
    # The check has teeth: the same Dockerfile on `python:latest` fails it.
    unpinned = re.sub(r"^FROM \S+", "FROM python:latest", DOCKERFILE.read_text(), flags=re.MULTILINE)
    (tmp_path / "Dockerfile").write_text(unpinned)
    result = run(tool("hadolint"), "--no-color", str(tmp_path / "Dockerfile"))
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "Using latest is prone to errors"


def test_image_is_multi_stage_pinned_and_runs_as_a_user_with_the_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE)
    assert len(bases) >= 2, "a builder stage and a runtime stage"
    for image, _stage in bases:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+@sha256:[0-9a-f]{64}", image), image
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    assert "COPY requirements-runtime.txt /tmp/requirements.txt" in text
    assert "-r /tmp/requirements.txt" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "no USER: the runtime would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r'^ENTRYPOINT \["docker/entrypoint\.sh"\]$', text, re.MULTILINE)


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "var", "docker/secrets", "docker/.env"} <= ignored


def test_shell_scripts_pass_shellcheck() -> None:
    result = run(tool("shellcheck"), "--shell=sh", "--severity=style", str(ENTRYPOINT), str(CLICKHOUSE_INIT))
    assert result.returncode == 0, result.stdout + result.stderr


# The entry point.


def test_entrypoint_offers_every_role_as_an_existing_manage_py_command() -> None:
    roles = entrypoint_roles()
    assert set(roles) >= ROLES
    commands = get_commands()  # every installed app's management commands, and Django's own
    for role, argv in roles.items():
        assert argv[:3] == ["python", "manage.py", argv[2]], f"{role}: {argv}"
        if role != "manage":  # `manage`: any command, given by the caller
            assert argv[2] in commands, f"role {role} runs manage.py {argv[2]}, which does not exist"
        assert argv[-1] == '"$@"', f"{role}: the role's arguments are not passed on"


@pytest.fixture
def fake_python(tmp_path: Path) -> dict[str, str]:
    """An environment whose `python` prints its arguments and the ClickHouse DSNs it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(
        '#!/bin/sh\necho "argv: $*"\n'
        'echo "writer: ${CLICKHOUSE_URL:-}"\necho "auditor: ${SHARDWALLET_CLICKHOUSE_AUDITOR_URL:-}"\n'
    )
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("api", "manage.py run_api --bind 0.0.0.0:9000"),
        ("worker", "manage.py run_worker --bind 0.0.0.0:9000"),
        ("beat", "manage.py run_beat --bind 0.0.0.0:9000"),
        ("cdc", "manage.py run_cdc --bind 0.0.0.0:9000"),
        ("migrate", "manage.py migrate_shards --bind 0.0.0.0:9000"),
        ("shell", "manage.py shell --bind 0.0.0.0:9000"),
        ("manage", "manage.py --bind 0.0.0.0:9000"),
    ],
)
def test_entrypoint_execs_the_role_with_its_arguments(fake_python: dict[str, str], role: str, expected: str) -> None:
    result = run("sh", str(ENTRYPOINT), role, "--bind", "0.0.0.0:9000", env=fake_python)
    assert result.returncode == 0, result.stderr
    assert f"argv: {expected}" in result.stdout
    assert Path(fake_python["PROMETHEUS_MULTIPROC_DIR"]).is_dir()


@pytest.mark.parametrize("argv", [["bogus"], []])
def test_entrypoint_refuses_an_unknown_or_missing_role_with_usage(fake_python: dict[str, str], argv: list[str]) -> None:
    result = run("sh", str(ENTRYPOINT), *argv, env=fake_python)
    assert result.returncode == 64
    assert "usage: entrypoint.sh ROLE" in result.stderr
    assert "argv:" not in result.stdout  # nothing was started


# The compose file.


def test_compose_file_matches_the_compose_spec_schema() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_references_only_what_it_defines() -> None:
    spec = compose()
    services = set(spec["services"])
    declared = {kind: set(spec.get(kind) or {}) for kind in ("volumes", "secrets", "configs", "networks")}
    problems = []
    for name, service in spec["services"].items():
        depends_on = service.get("depends_on", {})
        problems += [f"{name} depends on undefined {d}" for d in depends_on if d not in services]
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith(("/", ".", "~")) and source not in declared["volumes"]:
                problems.append(f"{name} mounts undeclared volume {source}")
        for kind in ("secrets", "configs", "networks"):
            for item in service.get(kind, []):
                source = item if isinstance(item, str) else item["source"]
                if source not in declared[kind]:
                    problems.append(f"{name} uses undeclared {kind[:-1]} {source}")
    for kind in ("secrets", "configs"):
        for item, definition in (spec.get(kind) or {}).items():
            path = definition.get("file", "")
            if path and not path.startswith("./secrets/") and not (DOCKER / path).exists():
                problems.append(f"{kind[:-1]} {item}: {path} does not exist")
    assert not problems, problems


def test_every_compose_variable_is_listed_in_the_env_example() -> None:
    used: dict[str, str | None] = {}
    for name, operator, _rest in VARIABLE.findall(COMPOSE.read_text()):
        used.setdefault(name, operator or None)
    # A $VAR without braces would be interpolated too; the file spells every variable ${...}.
    assert not re.findall(r"(?<!\$)\$(?![${])", COMPOSE.read_text())
    listed = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    required = {name for name, operator in used.items() if operator in (None, ":?", "?")}
    assert required <= listed, f"required but not in docker/.env.example: {sorted(required - listed)}"
    assert set(used) <= listed, f"not in docker/.env.example: {sorted(set(used) - listed)}"
    assert listed <= set(used), f"docker/.env.example lists what the compose file does not use: {listed - set(used)}"
    # Each is ${VAR:-default} or ${VAR:?message}: a missing required value stops `docker compose`
    # with the message, instead of starting the stack with an empty string.
    bare = [name for name, operator in used.items() if operator not in (":-", ":?")]
    assert not bare, f"give these a default or a :? message: {bare}"


def test_every_app_service_runs_a_role_of_the_entrypoint() -> None:
    spec = compose()
    roles = entrypoint_roles()
    services = app_services(spec)
    assert set(services) >= {"migrate", "api", "worker", "beat", "cdc"}
    for name, service in services.items():
        command = service.get("command")
        assert isinstance(command, list), f"{name} has no command: which role would it run?"
        assert command[0] in roles, f"{name} runs {command[0]!r}, not a role of docker/entrypoint.sh"
    assert {s["command"][0] for s in services.values()} >= LONG_RUNNING_ROLES | {"migrate"}


def test_the_roles_start_after_the_migrate_job_has_succeeded() -> None:
    spec = compose()
    migrate = spec["services"]["migrate"]
    assert migrate["restart"] == "no"
    for database in ("control-db", "shard-00", "shard-01"):
        assert migrate["depends_on"][database] == {"condition": "service_healthy"}
    for name, service in app_services(spec).items():
        if name != "migrate":
            assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    for name, service in spec["services"].items():
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency == "migrate" else "service_healthy"
            assert condition == {"condition": expected}, f"{name} -> {dependency}"


def test_long_running_services_have_a_healthcheck_and_restart_unless_stopped() -> None:
    spec = compose()
    services = long_running(spec)
    assert set(services) >= {"control-db", "shard-00", "shard-01", "redis", "clickhouse", "api", "worker", "beat"}
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
        assert test[0] in {"CMD", "CMD-SHELL"}, name
    for name in ("control-db", "shard-00", "shard-01", "redis", "clickhouse", "beat", "cdc"):
        assert any(":" in v for v in spec["services"][name].get("volumes", [])), f"{name} keeps no volume"


def test_the_shard_map_names_compose_services_running_logical_replication() -> None:
    from apps.sharding.shardmap import load_shard_map

    spec = compose()
    shard_map = load_shard_map(DOCKER / "shards.compose.yaml")
    servers = [shard_map.control, *shard_map.shards.values()]
    for server in servers:
        service = spec["services"].get(server.host)
        assert service is not None, f"{server.alias}: host {server.host} is not a compose service"
        assert "wal_level=logical" in service["command"], server.host
        assert service["environment"]["POSTGRES_USER"] == server.user
        assert service["environment"]["POSTGRES_DB"] == server.name
    configs = [c for s in app_services(spec).values() for c in s["configs"]]
    assert all(c == {"source": "shard_map", "target": "/etc/shardwallet/shards.yaml"} for c in configs)
    assert spec["configs"]["shard_map"]["file"] == "./shards.compose.yaml"


def _interpolate(value: str, defaults: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: defaults.get(m.group(1)) or m.group(3), value).replace("$$", "$")


@pytest.mark.parametrize("service", ["migrate", "api", "worker", "beat", "cdc"])
def test_each_roles_compose_environment_satisfies_the_production_settings(service: str, tmp_path: Path) -> None:
    """The settings as the container would load them, with files standing in for the secrets."""
    spec = compose()
    defaults = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DJANGO_SETTINGS_MODULE": "wallet_project.settings"}
    env["SHARDWALLET_DEVSTACK_DIR"] = str(tmp_path / "state")  # the image's ENV
    for key, value in spec["services"][service]["environment"].items():
        value = _interpolate(str(value), defaults)
        if value.startswith("/run/secrets/"):
            secret = tmp_path / value.removeprefix("/run/secrets/")
            # As docs/DEPLOY.md makes them (`openssl rand -hex 32`): production refuses a weak key.
            secret.write_text("http://writer:pw@clickhouse:8123\n" if "url" in secret.name else token_hex(32) + "\n")
            value = str(secret)
        elif value == "/etc/shardwallet/shards.yaml":
            value = str(DOCKER / "shards.compose.yaml")
        env[key] = value
    probe = "import django; django.setup(); from django.conf import settings; print(sorted(settings.DATABASES))"
    result = run(sys.executable, "-c", probe, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'shard_00', 'shard_01'" in result.stdout


# The ClickHouse server's users.


def _clickhouse_init(tmp_path: Path, writer: str, auditor: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    client = bin_dir / "clickhouse-client"
    client.write_text('#!/bin/sh\necho "client: $*"\ncat\n')
    client.chmod(0o755)
    (tmp_path / "writer").write_text(writer + "\n")
    (tmp_path / "auditor").write_text(auditor + "\n")
    (tmp_path / "admin").write_text("admin-secret\n")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CLICKHOUSE_USER": "admin",
        "CLICKHOUSE_PASSWORD_FILE": str(tmp_path / "admin"),
        "SHARDWALLET_WRITER_URL_FILE": str(tmp_path / "writer"),
        "SHARDWALLET_AUDITOR_URL_FILE": str(tmp_path / "auditor"),
    }
    return run("sh", str(CLICKHOUSE_INIT), env=env)


def test_clickhouse_init_creates_the_writer_and_a_read_only_auditor_from_the_dsns(tmp_path: Path) -> None:
    result = _clickhouse_init(
        tmp_path, "http://writer:0123456789abcdef01@clickhouse:8123", "http://auditor:fedcba9876543210ab@c:8123/audit"
    )
    assert result.returncode == 0, result.stderr
    sql = result.stdout
    assert "client: --host 127.0.0.1 --user admin --password admin-secret" in sql
    assert "0123456789abcdef01" not in sql  # only the passwords' SHA-256 reach the server
    assert "CREATE USER IF NOT EXISTS writer IDENTIFIED WITH sha256_hash BY '" in sql
    writer_grants = re.findall(r"GRANT (.*) ON audit\.\* TO writer;", sql)
    assert writer_grants == ["SELECT, INSERT, CREATE DATABASE, CREATE TABLE, CREATE VIEW, ALTER ADD COLUMN"]
    assert not re.search(r"\b(ALL|DROP|TRUNCATE|ALTER DELETE)\b", writer_grants[0])
    assert "CREATE USER IF NOT EXISTS auditor IDENTIFIED WITH sha256_hash" in sql
    assert "SETTINGS PROFILE 'shardwallet_auditor'" in sql
    assert "readonly = 1" in sql
    assert re.findall(r"GRANT .* TO auditor;", sql) == ["GRANT SELECT ON audit.* TO auditor;"]


@pytest.mark.parametrize(
    ("writer", "auditor", "refusal"),
    [
        ("http://writer:short@ch:8123", "http://auditor:fedcba9876543210ab@ch:8123", "password in"),
        ("http://writer:0123456789abcdef01@ch:8123", "http://writer:fedcba9876543210ab@ch:8123", "different users"),
        ("http://wri'ter:0123456789abcdef01@ch:8123", "http://auditor:fedcba9876543210ab@ch:8123", "user in"),
    ],
)
def test_clickhouse_init_refuses_unsafe_dsns(tmp_path: Path, writer: str, auditor: str, refusal: str) -> None:
    result = _clickhouse_init(tmp_path, writer, auditor)
    assert result.returncode != 0
    assert refusal in result.stderr
    assert "client:" not in result.stdout  # no SQL was sent


# supervisord.


@pytest.fixture
def supervisor_programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """deploy/supervisor/shardwallet.conf as supervisord reads it (no daemon started): its
    log directory moved to tmp_path, and the `shardwallet` user looked up as uid 10001."""
    from supervisor import options

    users: list[str] = []
    monkeypatch.setattr(options, "name_to_uid", lambda name: users.append(name) or 10001)
    conf = tmp_path / "shardwallet.conf"
    conf.write_text(SUPERVISOR_CONF.read_text().replace("/var/log/shardwallet/", f"{tmp_path}/"))
    main = tmp_path / "supervisord.conf"
    main.write_text(
        f"[supervisord]\nlogfile={tmp_path}/supervisord.log\npidfile={tmp_path}/supervisord.pid\n"
        f"[include]\nfiles={conf}\n"
    )
    server = options.ServerOptions()
    server.configfile = str(main)
    server.process_config(do_usage=False)  # raises ValueError on anything supervisord would refuse
    assert not server.parse_criticals, server.parse_criticals
    groups = {group.name: group for group in server.process_group_configs}
    assert set(groups) == {"shardwallet"}, "every program belongs to the shardwallet group"
    return {"programs": {p.name: p for p in groups["shardwallet"].process_configs}, "users": users}


def test_supervisord_runs_each_long_running_role_through_the_entrypoint(supervisor_programs: dict[str, Any]) -> None:
    programs = supervisor_programs["programs"]
    assert set(programs) == LONG_RUNNING_ROLES
    roles = entrypoint_roles()
    for name, program in programs.items():
        assert program.command.endswith(f"exec docker/entrypoint.sh {name}'"), program.command
        assert ". /etc/shardwallet/shardwallet.env" in program.command
        assert name in roles
        assert program.directory == "/opt/shardwallet/app"
        assert program.environment["PATH"].startswith("/opt/shardwallet/venv/bin:")
        assert program.stdout_logfile.endswith(f"/{name}.log")
        assert program.redirect_stderr
    assert supervisor_programs["users"] == ["shardwallet"] * len(programs)


def test_supervisord_restarts_and_stops_each_role_with_its_child_processes(supervisor_programs: dict[str, Any]) -> None:
    from supervisor.datatypes import RestartUnconditionally

    for name, program in supervisor_programs["programs"].items():
        assert program.autostart, name
        assert program.autorestart is RestartUnconditionally, name
        assert program.startretries >= 3, name
        assert program.stopsignal == signal.SIGTERM, name
        # SIGTERM to the role's own process (a warm shutdown), SIGKILL to its group after the wait.
        assert not program.stopasgroup, name
        assert program.killasgroup, name
        assert program.stopwaitsecs >= 10, name


# The image's requirements.


def _pins(path: Path) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in path.read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
        if found:
            pins[canonicalize_name(found.group(1))] = found.group(2)
    return pins


@pytest.mark.parametrize("name", ["requirements", "requirements-runtime"])
def test_the_lock_files_pin_the_inputs_versions_each_with_hashes(name: str) -> None:
    """What pip installs (the .txt, --require-hashes) is what the .in pins, every file hashed."""
    locked, wanted = ROOT / f"{name}.txt", ROOT / f"{name}.in"
    assert _pins(locked) == _pins(wanted), f"run `make lock`: {locked.name} is not {wanted.name}"
    entries = re.split(r"\n(?=[A-Za-z0-9])", locked.read_text().split("\n\n", 1)[-1])
    for entry in entries:
        if re.match(r"^[A-Za-z0-9]", entry):
            assert "--hash=sha256:" in entry, entry.splitlines()[0]
    assert "--require-hashes -r requirements.txt" in (ROOT / "Makefile").read_text()


def test_the_runtime_requirements_are_the_development_pins_and_complete() -> None:
    """requirements-runtime.txt (what the image installs) pins the same versions as
    requirements.txt, and every dependency of what it lists, so pip adds nothing unpinned."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    runtime = _pins(ROOT / "requirements-runtime.in")
    development = _pins(ROOT / "requirements.in")
    assert {name: development.get(name) for name in runtime} == runtime
    # What the code imports or runs (apps/, wallet_project/, the roles); their dependencies follow.
    needed = (
        "django", "djangorestframework", "drf-spectacular", "celery", "redis", "gunicorn", "whitenoise", "psycopg",
        "psycopg-binary", "psycopg2-binary", "chdb", "clickhouse-connect", "prometheus-client", "pyyaml", "orjson",
        "python-json-logger",
    )  # fmt: skip
    for name in needed:
        assert name in runtime
    unpinned = set()
    for name in runtime:
        for spec in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(spec)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(requirement.name) not in runtime:
                unpinned.add(f"{requirement.name} (needed by {name})")
    assert not unpinned, f"add to requirements-runtime.txt: {sorted(unpinned)}"
