"""A throw-away certificate authority for the stacks this project starts: TLS to PostgreSQL.

`make test-hosts` makes one at start and gives every database server a certificate for its
address, so the service connects with `sslmode=verify-full` as production does; the test suite
uses it for one server. Made with the `openssl` command line; the keys never leave the stack's
directory, and each run makes new ones.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# What PostgreSQL's configuration needs to serve TLS with the files `install` puts in its data directory.
SERVER_TLS_CONF = "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)  # noqa: S603, S607
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


@dataclass(frozen=True)
class Authority:
    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path, name: str = "shardwallet throw-away CA") -> Authority:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "ca.crt", directory / "ca.key"
        _openssl(
            "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-keyout", str(key), "-out", str(cert), "-days", "3", "-subj", f"/CN={name}",
        )  # fmt: skip
        key.chmod(0o600)
        return cls(cert, key)

    def issue(self, directory: Path, name: str, *, ip: str | None = None, dns: str | None = None) -> tuple[Path, Path]:
        """A certificate for `name` (a server's address, or a client's user name), signed by this CA."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key, request = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
        _openssl(
            "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}",
        )  # fmt: skip
        extensions = directory / f"{name}.ext"
        names = [f"IP:{ip}"] if ip else []
        names += [f"DNS:{dns}"] if dns else []
        extensions.write_text(f"subjectAltName={','.join(names)}\n" if names else "basicConstraints=CA:FALSE\n")
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-out", str(cert), "-days", "3", "-extfile", str(extensions),
        )  # fmt: skip
        request.unlink()
        extensions.unlink()
        key.chmod(0o600)
        return cert, key


def install(data_dir: Path, cert: Path, key: Path, *, owner: str | None = "postgres") -> None:
    """The server's certificate and key into its data directory, readable by the server only."""
    for source, target in ((cert, data_dir / "server.crt"), (key, data_dir / "server.key")):
        shutil.copyfile(source, target)
        target.chmod(0o600)
        if owner:
            shutil.chown(target, owner, owner)
