"""The replicated databases: the shard `layout.CLUSTER_SHARD` and the control database, each a
Patroni cluster of three members over one etcd cluster.

Each member host runs one Patroni member (PostgreSQL as the postgres user, TLS only, no unix
socket); the shard's member hosts also run the etcd cluster's members. The orchestrator never
connects to a host: it reads a member's REST API with curl run on the member's own host, and
the postmaster's pid from the shared filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.supervisor import Program
from hosts import net
from hosts.layout import (
    APP,
    ETCD_CLIENT_PORT,
    ETCD_DIR,
    ETCD_HOSTS,
    ETCD_PEER_PORT,
    LOGS,
    PATRONI_DIR,
    PATRONI_PORT,
    PG_DIR,
    POSTGRES_PORT,
    SECRETS,
    SUBNET,
    Host,
    host,
)
from hosts.patroni import (
    EtcdMember,
    MemberTLS,
    PatroniMember,
    etcd_argv,
    leading_member,
    patroni_argv,
    patroni_config,
    permanent_slot,
    slot_copy_safe,
    sync_standby_names,
    wait_for_roles,
    write_config,
)
from hosts.servers import CA_CERT, TLS_DIR, HostPostgres, made_once, pg_password

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
REST_USER = "operator"


def rest_password() -> str:
    """The password of Patroni's REST API for changes (configuration, switchover), made once per run."""
    return made_once(SECRETS / "patroni_rest_password")


def rest_curl_config() -> Path:
    """A curl config file with the REST API's basic auth (root-only), so no password is in a command line."""
    path = SECRETS / "patroni-rest.curl"
    if not path.exists():
        path.write_text(f'user = "{REST_USER}:{rest_password()}"\n')
        path.chmod(0o600)
    return path


def hba() -> list[str]:
    """TLS only, as every database host: the service and the members from the subnet, the CDC's stream from the app."""
    return [
        f"hostssl all all {SUBNET} scram-sha-256",
        f"hostssl replication replicator {SUBNET} scram-sha-256",  # the standbys, pg_basebackup
        f"hostssl replication all {APP.address}/32 scram-sha-256",  # the CDC
    ]


def _member_tls(member_host: Host) -> MemberTLS:
    """The host's certificate, key and the CA, copied where the postgres user (and only it) reads them."""
    directory = PATRONI_DIR / member_host.name
    directory.mkdir(parents=True, exist_ok=True)
    shutil.chown(directory, "postgres", "postgres")
    directory.chmod(0o700)
    files = MemberTLS(directory / "server.crt", directory / "server.key", directory / "ca.crt")
    sources = (TLS_DIR / f"{member_host.name}.crt", TLS_DIR / f"{member_host.name}.key", CA_CERT)
    for source, target in zip(sources, (files.cert, files.key, files.ca), strict=True):
        shutil.copyfile(source, target)
        target.chmod(0o600)
        shutil.chown(target, "postgres", "postgres")
    return files


def etcd_cluster() -> list[EtcdMember]:
    return [EtcdMember(h.name, h.address, ETCD_CLIENT_PORT, ETCD_PEER_PORT, ETCD_DIR / h.name) for h in ETCD_HOSTS]


def etcd_programs() -> list[Program]:
    """The etcd members, to start together (a new etcd cluster waits for its peers)."""
    cluster = etcd_cluster()
    programs = []
    for member in cluster:
        member.data_dir.mkdir(parents=True, exist_ok=True)
        argv = net.on(host(member.name), etcd_argv(member, cluster, "shardwallet-hosts"))
        programs.append(Program(f"etcd-{member.name}", argv, ENV, LOGS / f"etcd-{member.name}.log"))
    return programs


@dataclass
class ReplicatedDatabase:
    scope: str  # Patroni's cluster name: the server's alias in the map
    database: str
    members: list[PatroniMember]

    @classmethod
    def layout(cls, scope: str, database: str, hosts: list[Host]) -> ReplicatedDatabase:
        members = [
            PatroniMember(scope, h.name, h.address, POSTGRES_PORT, PATRONI_PORT, PG_DIR / h.name,
                          PATRONI_DIR / h.name / "patroni.yml")
            for h in hosts
        ]  # fmt: skip
        return cls(scope, database, members)

    @staticmethod
    def host_of(member: PatroniMember) -> Host:
        return host(member.name)

    def programs(self) -> list[Program]:
        """The Patroni members: the first bootstraps the cluster, the others clone it."""
        patroni = []
        for member in self.members:
            member_host = self.host_of(member)
            tls = _member_tls(member_host)
            config = patroni_config(member, etcd_cluster(), password=pg_password(), hba=hba(), tls=tls,
                                    rest_auth=(REST_USER, rest_password()))  # fmt: skip
            write_config(member, config)
            patroni.append(
                Program(f"patroni-{member.name}", net.on(member_host, patroni_argv(member)), ENV,
                        LOGS / f"patroni-{member.name}.log")
            )  # fmt: skip
        return patroni

    def read(self, member: PatroniMember, path: str) -> dict[str, Any] | None:
        """GET `path` of the member's REST API, from its own host; None if it does not answer."""
        argv = net.on(self.host_of(member), ["curl", "-sf", "-m", "2", f"{member.api_url}{path}"])
        result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            return None
        try:
            return dict(json.loads(result.stdout))
        except ValueError:
            return None

    def settled(self, members: list[PatroniMember] | None = None, timeout: float = 120) -> PatroniMember:
        """The leader, once one leads `members` (default: all) and a synchronous standby streams from it."""
        leader, _ = wait_for_roles(members or self.members, timeout, read=self.read)
        return leader

    def primary(self, among: list[PatroniMember] | None = None) -> PatroniMember | None:
        """The member that says it leads (of those given), if one does."""
        return leading_member(among or self.members, self.read)

    def _change(self, member: PatroniMember, method: str, path: str, body: dict[str, Any], *, auth: bool = True,
                timeout: int = 10) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """A change through the member's REST API (`PATCH /config`, `POST /switchover`), from its own
        host; with `auth`, as the operator (basic auth from a curl config file: no password in argv)."""
        argv = ["curl", "-sf", "--show-error", "-m", str(timeout), "-X", method, "-H", "Content-Type: application/json",
                *(["-K", str(rest_curl_config())] if auth else []), "--data", json.dumps(body),
                f"{member.api_url}{path}"]  # fmt: skip
        return subprocess.run(net.on(self.host_of(member), argv), capture_output=True, text=True, check=False)  # noqa: S603

    def keep_slot(self, leader: PatroniMember, slot: str, database: str) -> None:
        """Make the CDC's logical slot one of the cluster's permanent slots (as `patronictl edit-config`
        does): Patroni copies it to the standbys and advances their copies, so it survives a failover."""
        result = self._change(leader, "PATCH", "/config", permanent_slot(slot, database))
        if result.returncode != 0:
            raise RuntimeError(f"Patroni on {leader.name} refused the permanent slot {slot}: {result.stderr.strip()}")

    def refuses_strangers(self, leader: PatroniMember) -> bool:
        """Whether a configuration change without the operator's password is refused (401)."""
        return self._change(leader, "PATCH", "/config", {"loop_wait": 2}, auth=False).returncode != 0

    def wait_slot_ready(self, leader: PatroniMember, slot: str, timeout: float) -> float:
        """Seconds until every standby's Patroni says its copy of `slot` is safe to use after a failover."""
        started = time.monotonic()
        standbys = [m for m in self.members if m is not leader]
        while time.monotonic() - started < timeout:
            if all(slot_copy_safe(LOGS / f"patroni-{m.name}.log", slot) for m in standbys):
                return round(time.monotonic() - started, 1)
            time.sleep(1)
        raise TimeoutError(f"the standbys of {self.scope} did not report {slot} safe after {timeout:.0f} s")

    def sync_standby(self, leader: PatroniMember) -> PatroniMember | None:
        """The member the leader's cluster view names its synchronous standby."""
        names = sync_standby_names(self.read(leader, "/cluster"))
        return next((m for m in self.members if m.name in names), None)

    def switchover(self, leader: PatroniMember, candidate: PatroniMember) -> str:
        """Ask for a planned switchover (as `patronictl switchover`): the leader stops cleanly, the
        candidate is promoted. Returns Patroni's answer; the caller watches who leads, since Patroni
        answers 503 when the clean stop outlasts its wait (it waits for its WAL senders) and
        carries on regardless."""
        body = {"leader": leader.name, "candidate": candidate.name}
        result = self._change(leader, "POST", "/switchover", body, timeout=60)
        return f"exit {result.returncode}: {(result.stdout + result.stderr).strip()[-300:]}"

    def timeline(self, member: PatroniMember) -> int | None:
        state = self.read(member, "/patroni")
        return int(state["timeline"]) if state and "timeline" in state else None

    def create_database(self, leader: PatroniMember) -> None:
        """CREATE DATABASE on the leader, from its own host (the standbys get it by replication)."""
        HostPostgres.on(self.host_of(leader), self.database).ensure_database()

    def wait_rejoined(self, member: PatroniMember, timeline: int, timeout: float) -> float | None:
        """Seconds until `member` streams as a standby on `timeline` (the new primary's; an old primary
        cut off demotes itself on its own, but follows the new one only once rewound); None if not in time."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            state = self.read(member, "/patroni") or {}
            on = int(state.get("timeline") or 0)
            # Patroni 4 says so in `replication_state`; earlier ones in `state`.
            streaming = "streaming" in (state.get("replication_state"), state.get("state"))
            if state.get("role") == "replica" and streaming and on >= timeline:
                return round(time.monotonic() - started, 1)
            time.sleep(1)
        return None
