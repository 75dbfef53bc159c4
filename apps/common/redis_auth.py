"""Redis's own configuration for the credentials a `redis://` URL carries.

A URL `redis://:PASSWORD@host:port/0` becomes `requirepass`; `redis://USER:PASSWORD@...` an ACL
user with every command and key, with the passwordless `default` user turned off. The stacks
this project starts itself (`make test`, `make test-hosts`) write these lines into the server's
configuration file (mode 0600), never onto its command line, where `ps` would show them.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse


def auth_lines(url: str) -> list[str]:
    parsed = urlparse(url)
    if not parsed.password:
        return []
    password = unquote(parsed.password)
    if parsed.username:
        return ["user default off", f"user {unquote(parsed.username)} on >{password} ~* &* +@all"]
    return [f"requirepass {password}"]


def write_config(path: Path, url: str) -> Path:
    """A redis.conf of the URL's credentials, readable by its owner only (the rest is on the command line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# written at each start; the credentials come from the Redis URL\n")
        out.write("".join(f"{line}\n" for line in auth_lines(url)))
    return path
