"""Each member of a shard's replicated cluster as it answers now: primary, standby or down, and
how far a standby's replay is behind the primary (for the operations page)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import psycopg

from apps.sharding.shardmap import DatabaseServer

# Whether it is a standby, and its WAL position (a standby's replayed, a primary's written) in bytes.
_STATE_SQL = (
    "SELECT pg_is_in_recovery(), pg_wal_lsn_diff("
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, '0/0')::bigint"
)


@dataclass(frozen=True)
class MemberState:
    endpoint: str  # host:port
    role: str  # primary | standby | down
    lag_bytes: int | None = None  # a standby's replay position behind the primary's WAL; None if unknown
    error: str = ""


def member_states(server: DatabaseServer, timeout: int = 2) -> list[MemberState]:
    """One connection per member (not the cluster's read-write choice): what each says of itself.
    Empty for a server without members: there is nothing to tell apart."""
    if not server.members:
        return []
    seen: list[tuple[str, bool | None, int | None, str]] = []
    for host, port in server.endpoints:
        alone = dataclasses.replace(server, host=host, port=port, members=())
        try:
            with psycopg.connect(alone.conninfo(connect_timeout=timeout), autocommit=True) as conn:
                row = conn.execute(_STATE_SQL).fetchone()
            assert row is not None  # noqa: S101 - one row, always
            seen.append((f"{host}:{port}", bool(row[0]), None if row[1] is None else int(row[1]), ""))
        except psycopg.Error as exc:
            seen.append((f"{host}:{port}", None, None, f"{type(exc).__name__}: {exc}".strip().splitlines()[0]))
    primary_lsn = next((lsn for _, recovering, lsn, _ in seen if recovering is False), None)
    states = []
    for endpoint, recovering, lsn, error in seen:
        if recovering is None:
            states.append(MemberState(endpoint, "down", error=error))
        elif not recovering:
            states.append(MemberState(endpoint, "primary"))
        else:
            lag = None if primary_lsn is None or lsn is None else max(0, primary_lsn - lsn)
            states.append(MemberState(endpoint, "standby", lag))
    return states
