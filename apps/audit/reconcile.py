"""reconcile: does the audit store hold exactly what the shards hold, at one point of each shard?

A round (see `Round`):

1. **Points.** Each shard opens a `REPEATABLE READ READ ONLY` transaction whose first
   statement takes its snapshot and reads its WAL position L (apps.audit.points). The
   shard side is read in that snapshot only. A bucket is compared for the one shard whose
   snapshot serves it; one served by no snapshot or by two is moving, and looked at again.
2. **Wait.** Once every shard's point is open, each shard's WAL position M >= L is read,
   and the round waits (up to `wait` s) until `audit.cdc_positions` says the store holds
   every change before M on every shard. M rather than L: every commit of any shard before
   the last snapshot is then in the store, which the transfer check needs (a credit on the
   payee's shard precedes the completion on the payer's).
3. **The store as of L.** Per table, a row's latest version (FINAL) counts as of its
   bucket's shard s when it is from s's stream with `commit_lsn <= L` (and not from a
   transaction still committing at the snapshot), or from another shard's stream with a
   stream epoch no higher than s's at L: written before the bucket moved to s. Ledger
   entries, transfer events and payee credits are insert-only, so this is exact. Wallets
   and transfers change: one whose latest version is after L is left out on both sides
   (the shard's aggregate minus that row, read by id in the snapshot), and it must exist on
   a shard.
4. **Fingerprints.** Per bucket and table, (rows, money sum, sum of 60-bit row hashes) in
   SQL on both sides (apps.audit.fingerprints): memory is per bucket, not per row. A big
   store table is read in ranges of its sort key (`key_ranges`), summed per bucket here.
5. **Transfers.** In the store, every completed transfer as of its point has one debit of
   its amount on its payer and one credit on its payee, every failed one no entries or a
   debit and its refund (apps.audit.queries.transfer_pairing_sql), in ranges of ids.

Round 1 covers every bucket. A bucket that differs, holds a transfer that does not pair,
or is moving is looked at again in a new round with new points; what differs twice is
reported, drilling down to rows (in the round's snapshots, key order on both sides,
streamed, capped). The command exits 1 on any difference. Recorded gaps in the stream
(`audit.cdc_gaps`) are listed as warnings: history there is incomplete.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from apps.audit.fingerprints import TABLES, Table
from apps.audit.points import (
    ShardPoint,
    StorePosition,
    describe_lsn,
    find_invisible,
    open_point,
    read_later_lsn,
    wait_confirmed,
)
from apps.audit.queries import transfer_pairing_sql
from apps.sharding.ids import bucket_of
from apps.sharding.routing import shard_map

log = logging.getLogger(__name__)

ID_BUCKETS = 4096  # the 12-bit bucket field of an id, whatever the map uses
MAX_ROUNDS = 4
UNSETTLED_PER_BUCKET = 2_000  # rows changed after L, per bucket and table, excluded by id; more: look again
DRILL_BUCKETS = 16  # buckets drilled into per report
ROW_LINES = 20  # rows listed per table and shard
TRANSFER_LINES = 20
DRILL_CHUNK = 5_000  # rows fetched at a time from a shard's cursor when drilling
TRANSFERS_PER_CHECK = 1_000_000  # transfers paired per store query (bounds the store's memory)
ROWS_PER_STORE_QUERY = 4_000_000  # rows a fingerprint query of the store reads at most (about)

Fingerprint = tuple[int, int, int]  # rows, money, sum of hashes
_ZERO: Fingerprint = (0, 0, 0)


@dataclass(frozen=True)
class Gap:
    """A WAL range of one shard the store knows it never read."""

    shard: str
    from_lsn: int
    to_lsn: int
    cause: str
    resolution: str
    detail: str
    recorded_at: datetime

    def describe(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return (
            f"{self.shard}: WAL {describe_lsn(self.from_lsn)} to {describe_lsn(self.to_lsn)} was never read"
            f" ({self.cause}, {self.resolution}, recorded {self.recorded_at:%Y-%m-%d %H:%M:%S} UTC){detail}"
        )


@dataclass
class ReconcileReport:
    differences: list[str]
    wallets: int
    entries: int
    attempts: int  # rounds
    gaps: list[Gap] = field(default_factory=list)
    buckets: int = 0  # buckets compared in the first round
    transfers: int = 0  # terminal transfers checked in the first round

    @property
    def ok(self) -> bool:
        return not self.differences


def read_gaps(client: Any) -> list[Gap]:
    rows = client.query(
        "SELECT shard, from_lsn, to_lsn, cause, resolution, detail, recorded_at FROM audit.cdc_gaps FINAL"
        " ORDER BY shard, from_lsn"
    ).result_rows
    return [Gap(s, int(a), int(b), c, r, d, t) for s, a, b, c, r, d, t in rows]


@dataclass
class TransferProblem:
    transfer_id: Any
    bucket: int
    status: str
    amount: int
    currency: str
    debits: int
    credits: int
    refunds: int

    def describe(self, shard: str) -> str:
        expected = (
            "one debit of the amount on the payer and one credit of it on the payee"
            if self.status == "completed"
            else "no entries, or a debit of the amount on the payer and its refund"
        )
        return (
            f"transfer {self.transfer_id} (bucket {self.bucket} on {shard}) is {self.status}"
            f" ({self.amount} {self.currency}) but has {self.debits} debit(s), {self.credits} credit(s),"
            f" {self.refunds} refund(s) in the audit store that do not make {expected}"
        )


@dataclass
class RoundResult:
    differing: dict[int, list[str]] = field(default_factory=dict)  # bucket -> tables that differ
    moving: set[int] = field(default_factory=set)  # served by no snapshot, or by two
    busy: set[int] = field(default_factory=set)  # too many rows changed after L to leave them out by id
    problems: list[TransferProblem] = field(default_factory=list)
    lagging: dict[str, str] = field(default_factory=dict)  # shard -> why its point is not in the store
    lines: list[str] = field(default_factory=list)  # what is reported (the confirmed buckets, drilled into)
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows compared on the shards
    buckets: int = 0
    transfers: int = 0

    def flagged(self) -> set[int]:
        return set(self.differing) | {p.bucket for p in self.problems}


def reconcile(client: Any, *, wait: float = 10.0, max_rounds: int = MAX_ROUNDS) -> ReconcileReport:
    """Compare the store with the shards at consistent points; see the module's docstring.

    `wait` bounds how long a round waits for the store to hold its points."""
    gaps = read_gaps(client)
    current = shard_map()
    pending = set(range(current.bucket_count))
    seen: set[int] = set()  # buckets that differed or held an unpaired transfer in an earlier round
    differences: list[str] = []
    lag_reported: set[str] = set()
    first: RoundResult | None = None
    rounds = 0
    while pending:
        rounds += 1
        last = rounds >= max_rounds
        result = Round(client, pending, confirm=seen, last=last, first=rounds == 1).run(wait)
        first = first or result
        for alias, why in sorted(result.lagging.items()):
            if alias not in lag_reported:
                lag_reported.add(alias)
                differences.append(why)
        differences.extend(result.lines)
        flagged = result.flagged()
        reported = flagged if last else flagged & seen
        seen |= flagged
        pending = (flagged - reported) | result.moving | result.busy
        if last:
            differences.extend(
                f"bucket {b} could not be compared: no single shard served it in {rounds} rounds (moving)"
                for b in sorted(result.moving)
            )
            differences.extend(
                f"bucket {b} could not be compared: more than {UNSETTLED_PER_BUCKET} of its rows changed after the"
                f" point in each of {rounds} rounds"
                for b in sorted(result.busy)
            )
            break
        if result.moving:
            time.sleep(1.0)  # let the move's switch end
    assert first is not None  # noqa: S101
    return ReconcileReport(
        differences, first.rows.get("wallets", 0), first.rows.get("entries", 0), rounds, gaps, first.buckets,
        first.transfers,
    )  # fmt: skip


class Round:
    """One comparison at new points, over `buckets`; drills into the ones in `confirm`
    (or all, on the `last` round) that differ again."""

    def __init__(self, client: Any, buckets: set[int], *, confirm: set[int], last: bool, first: bool) -> None:
        self.client = client
        self.buckets = buckets
        self.confirm = confirm
        self.last = last
        self.first = first
        self.points: dict[str, ShardPoint] = {}
        self.owner: dict[int, str] = {}  # compared bucket -> its shard
        self.result = RoundResult()
        self._fingerprints: tuple[dict[tuple[int, str], Fingerprint], dict[tuple[int, str], Fingerprint]] = ({}, {})

    # -- the round ---------------------------------------------------------------------

    def run(self, wait: float) -> RoundResult:
        current = shard_map()
        timings: dict[str, float] = {}
        started = time.monotonic()
        try:
            for alias in current.aliases:
                self.points[alias] = open_point(current.shards[alias])
            for point in self.points.values():
                read_later_lsn(point)
            self._assign_buckets(current.bucket_count)
            with ThreadPoolExecutor(max_workers=max(1, len(self.points)), thread_name_prefix="reconcile") as pool:
                # The shards work on their snapshots while the store catches up.
                shard_side = {alias: pool.submit(self._shard_fingerprints, p) for alias, p in self.points.items()}
                self._wait_for_store(wait)
                timings["wait"] = time.monotonic() - started
                for point in self.points.values():
                    point.invisible = find_invisible(self.client, point)
                store_side, unsettled = self._store_fingerprints()
                timings["store"] = time.monotonic() - started - timings["wait"]
                settled = self._settle(shard_side, unsettled, pool)
                timings["shards_done"] = time.monotonic() - started
            self._compare(settled, store_side)
            mark = time.monotonic()
            self._check_transfers()
            timings["transfers"] = time.monotonic() - mark
            mark = time.monotonic()
            self._report()
            timings["report"] = time.monotonic() - mark
            log.info(
                "reconcile round",
                extra={
                    "buckets": len(self.owner), "moving": len(self.result.moving), "busy": len(self.result.busy),
                    "differing": len(self.result.differing), "unpaired_transfers": len(self.result.problems),
                    "unsettled_rows": sum(len(ids) for ids in unsettled.values()),
                    "points": {a: describe_lsn(p.lsn) for a, p in self.points.items()},
                    "invisible": {a: len(p.invisible) for a, p in self.points.items()},
                    "lagging": sorted(self.result.lagging),
                    "seconds": {k: round(v, 2) for k, v in timings.items()},
                },
            )  # fmt: skip
        finally:
            for point in self.points.values():
                try:
                    point.close()
                except Exception:  # a shard that went away: its connection goes with it
                    log.debug("reconcile: closing the point on %s failed", point.alias, exc_info=True)
        return self.result

    def _assign_buckets(self, bucket_count: int) -> None:
        servers: dict[int, list[str]] = defaultdict(list)
        for alias, point in self.points.items():
            for bucket in point.owned & self.buckets:
                servers[bucket].append(alias)
        for bucket in self.buckets:
            if len(servers[bucket]) == 1:
                self.owner[bucket] = servers[bucket][0]
            elif bucket < bucket_count:
                self.result.moving.add(bucket)
        self.result.buckets = len(self.owner)

    def _wait_for_store(self, wait: float) -> None:
        targets = {alias: p.later_lsn for alias, p in self.points.items()}
        positions = wait_confirmed(self.client, targets, wait)
        for alias, point in self.points.items():
            why = self._short(alias, point, positions.get(alias), wait)
            if why:
                self.result.lagging[alias] = why

    @staticmethod
    def _short(alias: str, point: ShardPoint, position: StorePosition | None, wait: float) -> str | None:
        if position is None:
            return f"{alias}: the audit store has no confirmed position for this shard (is the CDC following it?)"
        if position.confirmed_lsn < point.later_lsn:
            return (
                f"{alias}: after {wait:g} s the audit store holds its WAL up to {describe_lsn(position.confirmed_lsn)}"
                f" only, short of {describe_lsn(point.later_lsn)}; differences on {alias} may be the CDC's lag"
            )
        missing = [t.pg_table for t in TABLES if t.pg_table not in position.tables]
        if position.tables and missing:
            return f"{alias}: the audit store's position does not cover {', '.join(missing)}"
        return None

    # -- store side --------------------------------------------------------------------

    def _as_of(self) -> AsOf:
        aliases = sorted(set(self.owner.values()))
        index = {alias: i + 1 for i, alias in enumerate(aliases)}
        owner = [0] * ID_BUCKETS
        for bucket, alias in self.owner.items():
            owner[bucket] = index[alias]
        stray = len(aliases) + 1  # ids whose bucket the map does not have: no shard can serve them
        if self.first:
            for bucket in range(shard_map().bucket_count, ID_BUCKETS):
                owner[bucket] = stray
        points = [self.points[a] for a in aliases]
        return AsOf(
            owner=owner,
            names=[p.alias for p in points],
            lsns=[p.lsn for p in points],
            epochs=[p.epoch for p in points],
            invisible=[p.invisible for p in points],
            stray=stray,
        )

    def _store_fingerprints(self) -> tuple[dict[tuple[int, str], Fingerprint], dict[tuple[int, str], list[str]]]:
        """Per bucket and table, the store's fingerprint as of the points, and the ids of the
        rows changed after them (wallets, transfers). A big table is read in ranges of its
        sort key, so that no one query reads more than about ROWS_PER_STORE_QUERY rows."""
        fingerprints_: dict[tuple[int, str], Fingerprint] = {}
        late_counts: dict[tuple[int, str], int] = defaultdict(int)
        unsettled: dict[tuple[int, str], list[str]] = defaultdict(list)
        stray: dict[tuple[int, str], int] = defaultdict(int)
        as_of = self._as_of()
        for table in TABLES:
            ids = f"groupArrayIf({UNSETTLED_PER_BUCKET})(toString({table.key[0]}), NOT asof)" if table.updated else "[]"
            [(stored,)] = self.client.query(f"SELECT count() FROM {table.ch_table}").result_rows  # noqa: S608
            for where in key_ranges(table.sort_prefix, int(stored)):
                sql = (
                    f"SELECT b, o, countIf(live), sumIf(m, live), sum(toUInt128(h)), countIf(NOT asof), {ids},"  # noqa: S608
                    " countIf(is_deleted = 0)"
                    f" FROM ({as_of.projection(table, where)}) WHERE o > 0 GROUP BY b, o"
                )
                for bucket, o, rows, money, hashes, late, late_ids, present in self.client.query(
                    sql, parameters=as_of.params
                ).result_rows:
                    key = (bucket, table.name)
                    if o == as_of.stray:
                        stray[key] += present
                        continue
                    before = fingerprints_.get(key, _ZERO)
                    fingerprints_[key] = (before[0] + rows, before[1] + int(money), before[2] + int(hashes))
                    if table.updated and late:
                        late_counts[key] += late
                        unsettled[key].extend(late_ids)
        for (bucket, name), present in sorted(stray.items()):
            if present:
                self.result.lines.append(
                    f"bucket {bucket}, {name}: {present} row(s) in the audit store, but no shard can serve this bucket"
                )
        for key, late in late_counts.items():
            if late > len(unsettled[key]) or late > UNSETTLED_PER_BUCKET:
                self.result.busy.add(key[0])  # too busy to settle by id: look again
                self.owner.pop(key[0], None)
        return fingerprints_, {key: ids for key, ids in unsettled.items() if key[0] in self.owner}

    # -- shard side --------------------------------------------------------------------

    def _shard_fingerprints(self, point: ShardPoint) -> dict[tuple[int, str], Fingerprint]:
        mine = sorted(b for b, alias in self.owner.items() if alias == point.alias)
        if not mine:
            return {}
        everything = len(mine) == len(point.owned)
        out: dict[tuple[int, str], Fingerprint] = {}
        for table in TABLES:
            where = "" if everything else f" WHERE {table.pg_bucket()} = ANY(%s)"
            sql = (
                f"SELECT {table.pg_bucket()}, count(*), coalesce(sum({table.pg_money()}), 0),"  # noqa: S608
                f" coalesce(sum({table.pg_hash()}), 0) FROM {table.pg_table}{where} GROUP BY 1"
            )
            for bucket, rows, money, hashes in point.conn.execute(sql, [] if everything else [mine]):
                if bucket in point.owned:
                    out[(bucket, table.name)] = (int(rows), int(money), int(hashes))
        return out

    def _settle(
        self,
        shard_side: dict[str, Future[dict[tuple[int, str], Fingerprint]]],
        unsettled: dict[tuple[int, str], list[str]],
        pool: ThreadPoolExecutor,
    ) -> dict[tuple[int, str], Fingerprint]:
        """The shards' fingerprints without the rows whose store version is after L."""
        settled: dict[tuple[int, str], Fingerprint] = {}
        for future in shard_side.values():
            settled.update(future.result())
        compared: dict[str, int] = defaultdict(int)
        for (bucket, name), fingerprint in settled.items():
            if bucket in self.owner:
                compared[name] += fingerprint[0]
        self.result.rows = dict(compared)
        by_shard: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for (bucket, name), ids in unsettled.items():
            if bucket in self.owner:
                by_shard[self.owner[bucket]][name].extend(ids)
        late = {alias: pool.submit(self._late_rows, self.points[alias], tables) for alias, tables in by_shard.items()}
        for alias, pending in late.items():
            rows_by_bucket, found = pending.result()
            for key, (rows, money, hashes) in rows_by_bucket.items():
                before = settled.get(key, _ZERO)
                settled[key] = (before[0] - rows, before[1] - money, before[2] - hashes)
            self._check_exist(self.points[alias], by_shard[alias], found)
        return settled

    def _late_rows(
        self, point: ShardPoint, tables: dict[str, list[str]]
    ) -> tuple[dict[tuple[int, str], Fingerprint], dict[str, set[str]]]:
        """The snapshot's own version of the rows changed after L, per bucket; and which it holds."""
        out: dict[tuple[int, str], Fingerprint] = defaultdict(lambda: _ZERO)
        found: dict[str, set[str]] = {}
        for name, ids in tables.items():
            table = _TABLE[name]
            key = table.field(table.key[0]).pg
            sql = (
                f"SELECT {key}::text, {table.pg_bucket()}, {table.pg_money()}, {table.pg_hash()}"  # noqa: S608
                f" FROM {table.pg_table} WHERE {key} = ANY(%s::uuid[])"
            )
            found[name] = set()
            for row_id, bucket, money, hashes in point.conn.execute(sql, [ids]):
                found[name].add(row_id)
                rows_, money_, hashes_ = out[(bucket, name)]
                out[(bucket, name)] = (rows_ + 1, money_ + int(money), hashes_ + int(hashes))
        return dict(out), found

    def _check_exist(self, point: ShardPoint, tables: dict[str, list[str]], found: dict[str, set[str]]) -> None:
        """A row changed after L and absent from the snapshot was created after it: it must be
        on the shard now (read outside the snapshot)."""
        for name, ids in tables.items():
            absent = [i for i in ids if i not in found.get(name, set())]
            if not absent:
                continue
            table = _TABLE[name]
            key = table.field(table.key[0]).pg
            with point.fresh_connection() as conn:
                present = {
                    row_id
                    for (row_id,) in conn.execute(
                        f"SELECT {key}::text FROM {table.pg_table} WHERE {key} = ANY(%s::uuid[])",  # noqa: S608
                        [absent],
                    )
                }
            self.result.lines.extend(
                f"{table.row_label} {row_id}: in the audit store (changed after the point compared) but not on"
                f" {point.alias}"
                for row_id in absent
                if row_id not in present
            )

    # -- comparing ---------------------------------------------------------------------

    def _compare(
        self, shard_side: dict[tuple[int, str], Fingerprint], store_side: dict[tuple[int, str], Fingerprint]
    ) -> None:
        self._fingerprints = (shard_side, store_side)
        for bucket in sorted(self.owner):
            for table in TABLES:
                if shard_side.get((bucket, table.name), _ZERO) != store_side.get((bucket, table.name), _ZERO):
                    self.result.differing.setdefault(bucket, []).append(table.name)

    def _check_transfers(self) -> None:
        """Terminal transfers as of their points, and their entries in the store now (which
        holds every commit before M: a transfer's entries committed before its end). In
        ranges of transfer ids, so one query pairs about TRANSFERS_PER_CHECK transfers."""
        if not self.owner:
            return
        as_of = self._as_of()
        transfers = _TABLE["transfers"]
        [(stored,)] = self.client.query(f"SELECT count() FROM {transfers.ch_table}").result_rows  # noqa: S608
        for where in key_ranges("transfer_id", int(stored), TRANSFERS_PER_CHECK):
            source = (
                "SELECT transfer_id, status, amount_minor, currency, payer_id, payee_id"  # noqa: S608
                f" FROM ({as_of.projection(transfers, where)}) WHERE o > 0 AND live"
                " AND status IN ('completed', 'failed')"
            )
            sql = (
                "SELECT count(), groupArrayIf"  # noqa: S608
                f"({TRANSFER_LINES * 5})((transfer_id, status, amount_minor, currency, debits, credits, refunds),"
                f" NOT paired) FROM ({transfer_pairing_sql(source, where.removeprefix('WHERE ') or '1')})"
            )
            [(checked, unpaired)] = self.client.query(sql, parameters=as_of.params).result_rows
            self.result.transfers += int(checked)
            for transfer_id, status, amount, currency, debits, credits, refunds in unpaired:
                self.result.problems.append(
                    TransferProblem(transfer_id, bucket_of(transfer_id), status, int(amount), currency, debits,
                                    credits, refunds)
                )  # fmt: skip

    # -- reporting ---------------------------------------------------------------------

    def _report(self) -> None:
        confirmed = {b for b in self.result.flagged() if self.last or b in self.confirm}
        if not confirmed:
            return
        shard_side, store_side = self._fingerprints
        drilled = sorted(b for b in confirmed if b in self.result.differing)
        for bucket in drilled:
            alias = self.owner[bucket]
            for name in self.result.differing[bucket]:
                ours, theirs = shard_side.get((bucket, name), _ZERO), store_side.get((bucket, name), _ZERO)
                self.result.lines.append(
                    f"bucket {bucket} on {alias}, {name}: {_describe(ours)} on the shard, {_describe(theirs)} in the"
                    " audit store"
                )
        by_table: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for bucket in drilled[:DRILL_BUCKETS]:
            for name in self.result.differing[bucket]:
                by_table[name][self.owner[bucket]].append(bucket)
        for name, shards in by_table.items():
            for alias, buckets in sorted(shards.items()):
                self.result.lines.extend(self._drill(_TABLE[name], alias, buckets))
        if len(drilled) > DRILL_BUCKETS:
            self.result.lines.append(f"... {len(drilled) - DRILL_BUCKETS} more bucket(s) differ; rows not listed")
        problems = [p for p in self.result.problems if p.bucket in confirmed]
        for problem in problems[:TRANSFER_LINES]:
            self.result.lines.append(problem.describe(self.owner.get(problem.bucket, "?")))
        if len(problems) > TRANSFER_LINES:
            self.result.lines.append(f"... and {len(problems) - TRANSFER_LINES} more transfer(s) that do not pair")

    def _drill(self, table: Table, alias: str, buckets: list[int]) -> list[str]:
        """Row by row, in the round's snapshot and as of its point: which rows of `buckets` differ."""
        lines: list[str] = []
        differing = 0
        shard_rows = self._shard_rows(table, self.points[alias], buckets)
        store_rows = self._store_rows(table, buckets)
        for key, ours, theirs in _merge(shard_rows, store_rows):
            if theirs is not None and not theirs[1]:
                continue  # the store's version is after L: not comparable as of it
            store_fields = theirs[0] if theirs is not None and not theirs[2] else None
            if ours == store_fields:
                continue
            differing += 1
            if differing > ROW_LINES:
                continue
            fields = ours if ours is not None else theirs[0]
            bucket = bucket_of(uuid.UUID(fields[table.fields.index(table.field(table.bucket))]))
            label = f"{table.row_label} {'/'.join(str(k) for k in key)} (bucket {bucket} on {alias})"
            if store_fields is None:
                lines.append(f"{label} is on the shard but not in the audit store")
            elif ours is None:
                lines.append(f"{label} is in the audit store but not on the shard")
            else:
                changed = [
                    f"{f.label} is {a if a is not None else 'NULL'} on the shard, {b if b is not None else 'NULL'}"
                    " in the audit store"
                    for f, a, b in zip(table.fields, ours, store_fields, strict=True)
                    if a != b
                ]
                lines.append(f"{label}: {'; '.join(changed)}")
        if differing > ROW_LINES:
            lines.append(f"... and {differing - ROW_LINES} more {table.name} row(s) differ on {alias}")
        return lines

    def _shard_rows(self, table: Table, point: ShardPoint, buckets: list[int]) -> Iterator[tuple[tuple[Any, ...], Any]]:
        texts = ", ".join(f.pg_text() for f in table.fields)
        keys = [table.field(k) for k in table.key]
        sql = (
            f"SELECT {', '.join(k.pg for k in keys)}, {texts} FROM {table.pg_table}"  # noqa: S608
            f" WHERE {table.pg_bucket()} = ANY(%s) ORDER BY {', '.join(str(i + 1) for i in range(len(keys)))}"
        )
        with point.conn.cursor(name=f"reconcile_{table.pg_table}") as cursor:
            cursor.itersize = DRILL_CHUNK
            cursor.execute(sql, [buckets])
            for row in cursor:
                yield tuple(row[: len(keys)]), tuple(row[len(keys) :])

    def _store_rows(self, table: Table, buckets: list[int]) -> Iterator[tuple[tuple[Any, ...], Any]]:
        """One query, streamed: the store orders by the PostgreSQL key only the rows of `buckets`
        (a bucket is not a range of the store's sort key, so pages would each read the table)."""
        as_of = self._as_of()
        texts = ", ".join(f"{f.ch_text()} AS t_{i}" for i, f in enumerate(table.fields))
        sql = (
            f"SELECT {', '.join(table.key)}, asof, is_deleted, {texts} FROM ({as_of.projection(table)})"  # noqa: S608
            f" WHERE has({_ints(buckets)}, b) ORDER BY {table.ch_order()}"
        )
        n = len(table.key)
        with self.client.query_rows_stream(sql, parameters=as_of.params) as rows:
            for row in rows:
                yield tuple(row[:n]), (tuple(row[n + 2 :]), bool(row[n]), bool(row[n + 1]))


_TABLE = {t.name: t for t in TABLES}


@dataclass(frozen=True)
class AsOf:
    """The rule that says which store rows are as of their bucket's point, per shard index
    (1-based, in `names`; 0 is a bucket not compared). Numbers are written into the SQL
    (bounded: one per bucket and shard), names passed as a parameter."""

    owner: list[int]  # per id bucket, the index of its shard
    names: list[str]
    lsns: list[int]  # L per shard
    epochs: list[int]  # the shard's stream epoch at L
    invisible: list[list[int]]  # commit positions <= L the snapshot does not see
    stray: int  # the index of buckets no shard can serve (no name)

    @property
    def params(self) -> dict[str, Any]:
        return {"names": self.names}

    def projection(self, table: Table, where: str = "") -> str:
        """The table's latest row versions with their bucket `b`, its shard index `o`, and
        whether each is as of that shard's point (`asof`) and a live row then (`live`)."""
        invisible = f"CAST([{', '.join(_ints(x) for x in self.invisible)}], 'Array(Array(UInt64))')"
        return f"""
SELECT
    *,
    {table.ch_bucket()} AS b,
    arrayElement(CAST({_ints(self.owner)}, 'Array(UInt16)'), b + 1) AS o,
    if(o > 0 AND o <= length({{names:Array(String)}}) AND shard = arrayElement({{names:Array(String)}}, o),
       commit_lsn <= arrayElement(CAST({_ints(self.lsns)}, 'Array(UInt64)'), o)
           AND NOT has(arrayElement({invisible}, o), commit_lsn),
       bitShiftRight(version, 96) <= arrayElement(CAST({_ints(self.epochs)}, 'Array(UInt64)'), o)) AS asof,
    asof AND is_deleted = 0 AS live,
    {table.ch_money()} AS m,
    if(live, {table.ch_hash()}, toUInt64(0)) AS h
FROM {table.ch_table} FINAL
{where}
"""  # noqa: S608


def key_ranges(column: str, rows: int, per_range: int | None = None) -> list[str]:
    """WHERE clauses that split a table into ranges of its sort key's first column (a UUID),
    each of about `per_range` rows (ROWS_PER_STORE_QUERY), so FINAL reads each range alone.

    ClickHouse orders UUIDs by their last 64 bits first: random bits under the RFC variant
    (`10`), so ranges of that half split the rows evenly. Any order would do for correctness:
    the ranges cover every value once."""
    count = max(1, -(-rows // (per_range or ROWS_PER_STORE_QUERY)))
    if count == 1:
        return [""]
    low, span = 1 << 63, 1 << 62
    bounds = [f"toUUID('{uuid.UUID(int=low + span * i // count)}')" for i in range(1, count)]
    clauses = [f"WHERE {column} < {bounds[0]}"]
    clauses += [f"WHERE {column} >= {a} AND {column} < {b}" for a, b in itertools.pairwise(bounds)]
    clauses.append(f"WHERE {column} >= {bounds[-1]}")
    return clauses


def _ints(values: list[int]) -> str:
    return "[" + ",".join(str(int(v)) for v in values) + "]"


def _describe(fingerprint: Fingerprint) -> str:
    rows, money, _ = fingerprint
    return f"{rows} row(s) summing {money}"


def _merge(
    ours: Iterator[tuple[tuple[Any, ...], Any]], theirs: Iterator[tuple[tuple[Any, ...], Any]]
) -> Iterator[tuple[tuple[Any, ...], Any, Any]]:
    """Merge two streams sorted by key: (key, our value or None, their value or None)."""
    a, b = next(ours, None), next(theirs, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            assert a is not None  # noqa: S101
            yield a[0], a[1], None
            a = next(ours, None)
        elif a is None or b[0] < a[0]:
            yield b[0], None, b[1]
            b = next(theirs, None)
        else:
            yield a[0], a[1], b[1]
            a, b = next(ours, None), next(theirs, None)
