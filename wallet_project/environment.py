"""Configuration from the environment, with no dev default that silently applies in production.

`SHARDWALLET_ENV` says where the process runs: `production` (the default: a process started
without saying so is treated as a real deployment), `development` (`make run` and the other
make targets) or `test` (the test suite). A setting with a development default is required
in production: the process refuses to start, naming every variable that is missing.

Any variable may instead be given as `<NAME>_FILE`, the path of a file holding the value
(the convention of the official PostgreSQL and Redis images, for secrets mounted as files).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

MODES = ("production", "development", "test")


class ConfigurationError(ImproperlyConfigured):
    """The environment lacks or misstates a setting; the message names the variables."""


class Environment:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self.mode = self.environ.get("SHARDWALLET_ENV", "production")
        if self.mode not in MODES:
            raise ConfigurationError(f"SHARDWALLET_ENV must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.missing: list[str] = []
        self.problems: list[str] = []

    @property
    def production(self) -> bool:
        return self.mode == "production"

    def value(self, name: str) -> str | None:
        """The variable, or the content of the file `<name>_FILE` names (trailing newline dropped)."""
        if name in self.environ:
            return self.environ[name]
        path = self.environ.get(f"{name}_FILE")
        if path is None:
            return None
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            self.problems.append(f"{name}_FILE names {path}, which cannot be read ({exc.strerror})")
            return ""

    def get(self, name: str, dev_default: str) -> str:
        """A setting with a default fit only for a development or test machine: required in production."""
        value = self.value(name)
        if value:
            return value
        if self.production:
            self.missing.append(name)
            return dev_default  # never used: check() raises before the settings are served
        return dev_default

    def optional(self, name: str, default: str) -> str:
        """A setting whose default is right everywhere."""
        value = self.value(name)
        return default if value is None or value == "" else value

    def flag(self, name: str, default: bool) -> bool:
        value = self.optional(name, "1" if default else "0").strip().lower()
        if value not in {"0", "1", "true", "false", "yes", "no"}:
            self.problems.append(f"{name} must be 0 or 1, got {value!r}")
            return default
        return value in {"1", "true", "yes"}

    def refuse(self, problem: str) -> None:
        self.problems.append(problem)

    def check(self) -> None:
        """Raise once, naming everything that is wrong, rather than one variable per restart."""
        lines = []
        if self.missing:
            lines.append(
                f"{', '.join(self.missing)} must be set in production (or set SHARDWALLET_ENV=development on a"
                " development machine; docs/DEPLOY.md lists every variable)"
            )
        lines.extend(self.problems)
        if lines:
            raise ConfigurationError("; ".join(lines))


def bind_port(bind: str) -> str:
    """The port of an `address:port` bind, e.g. `127.0.0.1:8001` or `[::1]:8001`."""
    _address, colon, port = bind.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"a bind must be address:port, got {bind!r}")
    return str(int(port))
