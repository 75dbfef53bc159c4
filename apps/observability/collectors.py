"""Gauges computed at scrape time from the shards: the database is the truth, not a process's memory."""

from __future__ import annotations

from collections.abc import Iterator

from django.db import DatabaseError, connections
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from apps.audit.slots import slot_states
from apps.common.supervision import read_state, supervisor_state_file
from apps.observability.cdc import cdc_lag
from apps.sharding.fence_alarm import stranded_fences
from apps.sharding.members import member_states
from apps.sharding.moves import move_overview
from apps.sharding.routing import shard_aliases, shard_map
from apps.sharding.shardmap import DatabaseServer

# Only transfers in flight, read through the partial index `transfer_in_flight`: a scrape
# costs what is in flight, not what the shard has ever stored. Terminal outcomes are
# counted by the processes that reach them (shardwallet_transfer_transitions_total).
_IN_FLIGHT_SQL = """
SELECT status, count(*), count(*) FILTER (WHERE parked_at IS NOT NULL)
  FROM transfers_transfer
 WHERE status IN ('pending', 'debited', 'refunding') AND sharding_serves(id) GROUP BY 1
"""


class ShardCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("shardwallet_shard_up", "1 if the shard answered this scrape.", labels=["shard"])
        transfers = GaugeMetricFamily(
            "shardwallet_transfers_in_flight",
            "Transfers in flight on each shard, by status (pending, debited, refunding).",
            labels=["shard", "status"],
        )
        parked = GaugeMetricFamily(
            "shardwallet_transfers_parked", "In-flight transfers parked for an operator.", labels=["shard"]
        )
        for alias in shard_aliases():
            try:
                with connections[alias].cursor() as cursor:
                    cursor.execute(_IN_FLIGHT_SQL)
                    rows = cursor.fetchall()
            except DatabaseError:
                connections[alias].close()  # do not keep a broken persistent connection
                up.add_metric([alias], 0)
                continue
            up.add_metric([alias], 1)
            for status, count, _ in rows:
                transfers.add_metric([alias, status], count)
            parked.add_metric([alias], sum(row[2] for row in rows))
        yield up
        yield transfers
        yield parked
        yield from self._moves()
        yield from self._cdc()
        yield from member_gauges(shard_map().servers)

    def _moves(self) -> Iterator[GaugeMetricFamily]:
        epoch = GaugeMetricFamily("shardwallet_shard_map_epoch", "Version of the shard map this process routes by.")
        epoch.add_metric([], shard_map().epoch)
        yield epoch
        active = GaugeMetricFamily(
            "shardwallet_bucket_move_active", "1 for the move in progress, by phase.", labels=["move", "phase"]
        )
        lag = GaugeMetricFamily(
            "shardwallet_bucket_move_lag_bytes", "WAL the move's target has yet to apply.", labels=["move"]
        )
        try:
            views = [v for v in move_overview(limit=3) if v.move.state == "active"]
        except DatabaseError:
            views = []
        for view in views:
            active.add_metric([str(view.move.id), view.move.phase], 1)
            if view.lag_bytes is not None:
                lag.add_metric([str(view.move.id)], view.lag_bytes)
        yield active
        yield lag
        stranded = GaugeMetricFamily(
            "shardwallet_bucket_fence_stranded_seconds",
            "Age of a fence nobody serves past (the map still names the fenced shard), by shard and range.",
            labels=["shard", "buckets"],
        )
        try:
            fences, _unreadable = stranded_fences()
        except Exception:  # the control database down: the other gauges say so
            fences = []
        for fence in fences:
            stranded.add_metric([fence.shard, f"{fence.first}..{fence.last}"], fence.seconds)
        yield stranded

    def _cdc(self) -> Iterator[GaugeMetricFamily]:
        lags = cdc_lag()
        running = GaugeMetricFamily("shardwallet_cdc_up", "1 while the change-data-capture process reports, else 0.")
        running.add_metric([], 0 if lags is None else 1)
        yield running
        seconds = GaugeMetricFamily(
            "shardwallet_cdc_lag_seconds", "How far the audit store is behind each shard, in seconds.", labels=["shard"]
        )
        size = GaugeMetricFamily(
            "shardwallet_cdc_lag_bytes", "How far the audit store is behind each shard, in WAL bytes.", labels=["shard"]
        )
        stopped = GaugeMetricFamily(
            "shardwallet_cdc_stream_stopped",
            "1 while a shard's change stream waits for an operator (cause: slot_missing, slot_lost, slot_ahead,"
            " slot_moved, slot_behind, foreign_slot, schema_drift, undecodable); see `manage.py cdc_status`.",
            labels=["shard", "cause"],
        )
        for alias, lag in (lags or {}).items():
            seconds.add_metric([alias], lag.seconds)
            size.add_metric([alias], lag.bytes)
            if lag.stopped:
                stopped.add_metric([alias, lag.stopped], 1)
        yield seconds
        yield size
        yield stopped
        yield from self._slots()

    def _slots(self) -> Iterator[GaugeMetricFamily]:
        """Every audit slot as its shard reports it: read here, so a slot filling the disk
        shows even when no CDC process runs."""
        labels = ["shard", "slot"]
        retained = GaugeMetricFamily(
            "shardwallet_cdc_slot_retained_bytes", "WAL a shard keeps for an audit slot.", labels=labels
        )
        safe = GaugeMetricFamily(
            "shardwallet_cdc_slot_safe_wal_bytes",
            "WAL that can still be written before the slot is lost (max_slot_wal_keep_size).",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "shardwallet_cdc_slot_lag_bytes", "The shard's WAL position less the slot's confirmed one.", labels=labels
        )
        status = GaugeMetricFamily(
            "shardwallet_cdc_slot_wal_status", "1 for the slot's wal_status (lost: its changes are gone).",
            labels=[*labels, "status"],
        )  # fmt: skip
        for alias in shard_aliases():
            try:
                with connections[alias].cursor() as cursor:
                    states = slot_states(cursor.connection)
            except DatabaseError:
                connections[alias].close()
                continue
            for state in states:
                key = [alias, state.slot]
                if state.retained_bytes is not None:
                    retained.add_metric(key, state.retained_bytes)
                if state.safe_wal_bytes is not None:
                    safe.add_metric(key, state.safe_wal_bytes)
                if state.lag_bytes is not None:
                    lag.add_metric(key, state.lag_bytes)
                status.add_metric([*key, state.wal_status or "unknown"], 1)
        yield retained
        yield safe
        yield lag
        yield status


def member_gauges(servers: list[DatabaseServer]) -> Iterator[GaugeMetricFamily]:
    """Each replicated server's members as they answer (servers without `members` are left out)."""
    up = GaugeMetricFamily(
        "shardwallet_db_member_up", "1 if the member answered, by its role (primary, standby; down: 0).",
        labels=["server", "member", "role"],
    )  # fmt: skip
    lag = GaugeMetricFamily(
        "shardwallet_db_member_replay_lag_bytes", "How far a standby's replay is behind its primary's WAL.",
        labels=["server", "member"],
    )  # fmt: skip
    synchronous = GaugeMetricFamily(
        "shardwallet_db_member_synchronous",
        "1 for a standby its primary waits for at commit, 0 for one it does not (absent: not visible to this"
        " login, which needs pg_monitor).",
        labels=["server", "member"],
    )
    primaries = GaugeMetricFamily(
        "shardwallet_db_primaries",
        "Members taking writes: 1, or 0 (no primary), or 2+ (split brain).",
        labels=["server"],
    )
    sync_standbys = GaugeMetricFamily(
        "shardwallet_db_sync_standbys", "Synchronous standbys the primary has (with strict mode, 0 stops writes).",
        labels=["server"],
    )  # fmt: skip
    for server in servers:
        states = member_states(server)
        if not states:
            continue
        for state in states:
            up.add_metric([server.alias, state.endpoint, state.role], 0 if state.role == "down" else 1)
            if state.lag_bytes is not None:
                lag.add_metric([server.alias, state.endpoint], state.lag_bytes)
            if state.synchronous is not None:
                synchronous.add_metric([server.alias, state.endpoint], int(state.synchronous))
            if state.sync_standbys is not None:
                sync_standbys.add_metric([server.alias], state.sync_standbys)
        primaries.add_metric([server.alias], sum(1 for state in states if state.role == "primary"))
    yield from (up, lag, synchronous, primaries, sync_standbys)


class SupervisorCollector(Collector):
    """`manage.py serve`'s processes on this host, when it runs: up, and restarts since it started."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = read_state(supervisor_state_file())
        if state is None:
            return
        up = GaugeMetricFamily(
            "shardwallet_supervised_up", "1 while serve's process of this role runs.", labels=["process"]
        )
        restarts = CounterMetricFamily(
            "shardwallet_supervised_restarts",
            "Times serve restarted a process of this role after it died.",
            labels=["process"],
        )
        for name, program in state["programs"].items():
            up.add_metric([name], 1 if program["up"] else 0)
            restarts.add_metric([name], program["restarts"])
        yield up
        yield restarts
