"""Who talks to whom: every host's sockets (`ss` inside its namespace) against the allowed edges.

A host listens on its own address only (the app host's embedded audit endpoint on its own
127.0.0.1 is the one exception), no unix socket listens at a path (the filesystem is shared:
a socket file would be a way between hosts around the network), and every connection is
an edge of the deployment: app -> control, shards, Redis's master, the sentinels; client -> API;
the relay on the slow shard's host -> its own PostgreSQL; within each replicated database's
member hosts: replication and Patroni's REST API; every member host -> etcd, and etcd's peers;
Redis's replication and the sentinels' watch and talk among themselves.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from hosts import net
from hosts.layout import (
    API_PORT,
    APP,
    AUDIT_HTTP_PORT,
    CLIENT,
    CLUSTER_SHARD,
    CONTROL,
    CONTROL_MEMBER_HOSTS,
    CONTROL_STANDBY_HOSTS,
    DATABASE_HOSTS,
    ETCD_CLIENT_PORT,
    ETCD_HOSTS,
    ETCD_PEER_PORT,
    HOSTS,
    MEMBER_HOSTS,
    OPS_PORT,
    PATRONI_PORT,
    POSTGRES_PORT,
    REDIS_HOSTS,
    REDIS_PORT,
    RELAY_PORT,
    SENTINEL_HOSTS,
    SENTINEL_PORT,
    SHARD_HOSTS,
    SLOW_SHARD,
    STANDBY_HOSTS,
    Host,
)

LOOPBACK = ("127.", "::1")


def _edges() -> set[tuple[str, str, int]]:
    """(client host, server host, server port) of every connection the deployment makes."""
    edges = {
        (APP.name, CONTROL.name, POSTGRES_PORT),
        (CLIENT.name, APP.name, API_PORT),
    }
    for server in REDIS_HOSTS:
        edges.add((APP.name, server.name, REDIS_PORT))  # the master, whichever the sentinels name
        edges.add((server.name, server.name, REDIS_PORT))  # redis-cli on its own host: role, the queue's length
        # Replication, either way round after a failover; the sentinels watching every server.
        edges |= {(other.name, server.name, REDIS_PORT) for other in REDIS_HOSTS if other != server}
        edges |= {(sentinel.name, server.name, REDIS_PORT) for sentinel in SENTINEL_HOSTS}
    # The sentinels among themselves (the app host's own included: the app asks it too).
    edges |= {(one.name, other.name, SENTINEL_PORT) for one in SENTINEL_HOSTS for other in SENTINEL_HOSTS}
    edges |= {(APP.name, sentinel.name, SENTINEL_PORT) for sentinel in SENTINEL_HOSTS}
    for shard in SHARD_HOSTS:
        edges.add((APP.name, shard.name, RELAY_PORT if shard.name == SLOW_SHARD else POSTGRES_PORT))
    for database in DATABASE_HOSTS:
        edges.add((database.name, database.name, POSTGRES_PORT))  # psql creating the database; the relay
    for standby in (*STANDBY_HOSTS, *CONTROL_STANDBY_HOSTS):
        edges.add((APP.name, standby.name, POSTGRES_PORT))  # libpq looking for the member that takes writes
    for cluster in (MEMBER_HOSTS, CONTROL_MEMBER_HOSTS):
        for one in cluster:
            # A member's Patroni (its own server, the others' REST API), a standby's replication, curl of ours.
            edges |= {(one.name, other.name, port) for other in cluster for port in (POSTGRES_PORT, PATRONI_PORT)}
            edges |= {(one.name, etcd.name, ETCD_CLIENT_PORT) for etcd in ETCD_HOSTS}  # every Patroni's etcd
    edges |= {(one.name, other.name, ETCD_PEER_PORT) for one in ETCD_HOSTS for other in ETCD_HOSTS}
    return edges


EDGES = _edges()
HOST_BY_ADDRESS = {h.address: h for h in HOSTS}


@dataclass(frozen=True)
class Socket:
    host: str
    kind: str  # tcp | unix
    state: str
    local: str
    local_port: int
    peer: str
    peer_port: int
    process: str

    def __str__(self) -> str:
        return (
            f"{self.host}: {self.kind} {self.state} {self.local}:{self.local_port} -> {self.peer}:{self.peer_port}"
            f" {self.process}"
        )


def _split(endpoint: str) -> tuple[str, int]:
    address, _, port = endpoint.rpartition(":")
    address = address.strip("[]").split("%", 1)[0]
    return address, int(port) if port.isdigit() else 0


def _ss(host: Host, *args: str) -> list[str]:
    result = subprocess.run(net.on(host, ["ss", "-H", *args]), capture_output=True, text=True, check=True)  # noqa: S603
    return [line for line in result.stdout.splitlines() if line.strip()]


def snapshot() -> list[Socket]:
    """Every host's sockets, the hosts read at once: one by one, the 13 hosts' `ss` took 10-14 s
    in a slow hour (at once, 7-8 s: each `ss -p` reads every process on the machine), and the
    scenarios' first faults come after it."""
    with ThreadPoolExecutor(max_workers=len(HOSTS)) as pool:
        return [socket for found in pool.map(_host_sockets, HOSTS) for socket in found]


def _host_sockets(host: Host) -> list[Socket]:
    sockets = []
    for line in _ss(host, "-tanp"):
        fields = line.split(maxsplit=5)
        local, local_port = _split(fields[3])
        peer, peer_port = _split(fields[4])
        process = fields[5] if len(fields) > 5 else ""
        sockets.append(Socket(host.name, "tcp", fields[0], local, local_port, peer, peer_port, process))
    for line in _ss(host, "-xlp"):
        fields = line.split()
        path = fields[4] if len(fields) > 4 else ""
        sockets.append(Socket(host.name, "unix", fields[1], path, 0, "", 0, " ".join(fields[8:])))
    return sockets


def problems(sockets: list[Socket]) -> list[str]:
    """Every socket that is not allowed, said plainly."""
    found = []
    listening = {(s.host, s.local_port) for s in sockets if s.kind == "tcp" and s.state == "LISTEN"}
    for s in sockets:
        if s.kind == "unix":
            if s.local and not s.local.startswith("@"):
                found.append(f"a unix socket listens at a path (reachable from every host): {s}")
            continue
        own = next(h.address for h in HOSTS if h.name == s.host)
        # On the app host's loopback by design: the auditors' endpoint, and the operators' listener
        # (the admin, /metrics: SHARDWALLET_OPS_BIND's production default).
        audit = s.host == APP.name and AUDIT_HTTP_PORT in (s.local_port, s.peer_port)
        operators = s.host == APP.name and OPS_PORT in (s.local_port, s.peer_port)
        if s.local.startswith(LOOPBACK):
            if not (audit or operators):
                found.append(f"loopback in use: {s}")
            continue
        if s.state == "LISTEN":
            if s.local != own:
                found.append(f"listens on {s.local or 'every address'}, not only its host's {own}: {s}")
            continue
        peer = HOST_BY_ADDRESS.get(s.peer)
        if peer is None:
            found.append(f"connection to an address that is no host of ours: {s}")
            continue
        if (s.host, s.local_port) in listening:
            edge = (peer.name, s.host, s.local_port)  # accepted by this host
        else:
            edge = (s.host, peer.name, s.peer_port)  # made by this host
        if edge not in EDGES:
            found.append(f"connection {edge[0]} -> {edge[1]}:{edge[2]} is not one of the deployment's: {s}")
    return found


def _required() -> list[set[tuple[str, str, int]]]:
    """The edges a working deployment uses at every moment of a load (the others come and go):
    at least one of each set (the replicated shard's primary may be any of its members)."""
    edges = [
        {(APP.name, member.name, POSTGRES_PORT) for member in CONTROL_MEMBER_HOSTS},
        {(APP.name, server.name, REDIS_PORT) for server in REDIS_HOSTS},
        {(CLIENT.name, APP.name, API_PORT)},
    ]
    for shard in SHARD_HOSTS:
        if shard.name == CLUSTER_SHARD:
            edges.append({(APP.name, member.name, POSTGRES_PORT) for member in MEMBER_HOSTS})
        else:
            edges.append({(APP.name, shard.name, RELAY_PORT if shard.name == SLOW_SHARD else POSTGRES_PORT)})
    return edges


REQUIRED = _required()


def _outgoing(sockets: list[Socket]) -> list[tuple[str, str, int]]:
    """(client host, server host, server port) of each established connection a host made."""
    listening = {(s.host, s.local_port) for s in sockets if s.kind == "tcp" and s.state == "LISTEN"}
    found = []
    for s in sockets:
        if s.kind != "tcp" or s.state != "ESTAB" or (s.host, s.local_port) in listening:
            continue
        peer = HOST_BY_ADDRESS.get(s.peer)
        if peer is not None:
            found.append((s.host, peer.name, s.peer_port))
    return found


def missing(sockets: list[Socket]) -> list[str]:
    """Required edges with no established connection: a check that sees nothing proves nothing."""
    seen = set(_outgoing(sockets))
    return [
        f"no connection {' or '.join(f'{a} -> {b}:{port}' for a, b, port in sorted(alternatives))} while the load runs"
        for alternatives in REQUIRED
        if not alternatives & seen
    ]


def summary(sockets: list[Socket]) -> dict[str, int]:
    """Established connections per edge, for the report: e.g. `app->shard_00:5432`: 14."""
    counts: dict[str, int] = {}
    for client, server, port in _outgoing(sockets):
        name = f"{client}->{server}:{port}"
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
