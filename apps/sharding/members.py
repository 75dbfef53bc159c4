"""Each member of a shard's replicated cluster as it answers now: primary, standby or down, how
far a standby's replay is behind the primary, and which standby is synchronous (for the
operations page, /health and /metrics)."""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass

import psycopg

from apps.sharding.shardmap import DatabaseServer

# Whether it is a standby, and its WAL position (a standby's replayed, a primary's written) in bytes.
_STATE_SQL = (
    "SELECT pg_is_in_recovery(), pg_wal_lsn_diff("
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, '0/0')::bigint"
)


# On the primary: the address and synchronous state of each WAL sender (standbys, and the CDC's,
# always async). Both are NULL for a login without pg_read_all_stats (pg_monitor): then which
# standby is synchronous is unknown.
_STANDBYS_SQL = "SELECT host(client_addr), sync_state FROM pg_stat_replication"


@dataclass(frozen=True)
class MemberState:
    endpoint: str  # host:port
    role: str  # primary | standby | down
    lag_bytes: int | None = None  # a standby's replay position behind the primary's WAL; None if unknown
    error: str = ""
    # A standby: whether the primary waits for it at commit (None: not visible to this login, or
    # two members share its address). A primary: how many synchronous standbys it has now.
    synchronous: bool | None = None
    sync_standbys: int | None = None
    sync_required: bool = False  # a primary: commits wait for a synchronous standby (synchronous_standby_names)

    @property
    def stalls_writes(self) -> bool:
        """A primary whose commits wait for a synchronous standby it does not have."""
        return self.role == "primary" and self.sync_required and self.sync_standbys == 0


def _address(host: str) -> str | None:
    try:
        return str(socket.getaddrinfo(host, None)[0][4][0])
    except (OSError, IndexError):
        return None


def _visible(standbys: list[tuple[str | None, str | None]]) -> bool:
    """Whether this login sees the WAL senders' details (pg_monitor): hidden ones are NULL."""
    return all(addr is not None and state is not None for addr, state in standbys)


def _synchronous(standbys: list[tuple[str | None, str | None]], address: str | None, shared: bool) -> bool | None:
    """Whether the standby at `address` is one the primary waits for (as pg_stat_replication says)."""
    if address is None or shared or not _visible(standbys):
        return None
    return any(addr == address and state in ("sync", "quorum") for addr, state in standbys)


def member_states(server: DatabaseServer, timeout: int = 2) -> list[MemberState]:
    """One connection per member (not the cluster's read-write choice): what each says of itself.
    Empty for a server without members: there is nothing to tell apart."""
    if not server.members:
        return []
    seen: list[tuple[str, bool | None, int | None, str]] = []
    standbys: list[tuple[str | None, str | None]] = []
    sync_required = False
    for host, port in server.endpoints:
        alone = dataclasses.replace(server, host=host, port=port, members=())
        try:
            with psycopg.connect(alone.conninfo(connect_timeout=timeout), autocommit=True) as conn:
                row = conn.execute(_STATE_SQL).fetchone()
                assert row is not None  # noqa: S101 - one row, always
                if not row[0]:
                    standbys = [(r[0], r[1]) for r in conn.execute(_STANDBYS_SQL).fetchall()]
                    names = conn.execute("SELECT current_setting('synchronous_standby_names')").fetchone()
                    sync_required = bool(names and names[0])
            seen.append((f"{host}:{port}", bool(row[0]), None if row[1] is None else int(row[1]), ""))
        except psycopg.Error as exc:
            seen.append((f"{host}:{port}", None, None, f"{type(exc).__name__}: {exc}".strip().splitlines()[0]))
    primary_lsn = next((lsn for _, recovering, lsn, _ in seen if recovering is False), None)
    addresses = {endpoint: _address(endpoint.rpartition(":")[0]) for endpoint, *_ in seen}
    sync_count = sum(1 for _, state in standbys if state in ("sync", "quorum")) if _visible(standbys) else None
    states = []
    for endpoint, recovering, lsn, error in seen:
        if recovering is None:
            states.append(MemberState(endpoint, "down", error=error))
        elif not recovering:
            states.append(MemberState(endpoint, "primary", sync_standbys=sync_count, sync_required=sync_required))
        else:
            lag = None if primary_lsn is None or lsn is None else max(0, primary_lsn - lsn)
            shared = list(addresses.values()).count(addresses[endpoint]) > 1
            states.append(
                MemberState(endpoint, "standby", lag, synchronous=_synchronous(standbys, addresses[endpoint], shared))
            )
    return states
