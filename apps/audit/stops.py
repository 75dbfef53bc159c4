"""Why a shard's change stream stops instead of going on, and the checks that decide it.

The audit trail must never have a silent hole, so each of these stops the one shard's
stream (the others go on), says why in the log, the status file, /metrics, /health and
the operations page, and waits for an operator (docs/ARCHITECTURE.md, "Operating the
audit stream"):

- the slot the store followed is gone, invalidated, ahead of the store, moved by someone
  else, or on a shard whose history no longer holds the store's position (`SlotGap`): the
  changes in between are lost to this store; `manage.py cdc_resnapshot` takes a new
  snapshot and records the gap;
- a slot on the shard belongs to another store (`SlotGap`, cause `foreign_slot`);
- a captured table no longer has a column the store needs (`SchemaDrift`);
- a change the reader cannot decode (`UndecodableChange`): `manage.py cdc_skip` leaves that
  one transaction out and records it as a gap.
"""

from __future__ import annotations

from typing import Any

from apps.audit.pgoutput import Relation, lsn_to_str
from apps.audit.sink import EPOCH, TYPED_TABLES, TypedTable

# Columns the store keeps as integers: a change of type would put non-integers in them.
INTEGER_TYPES = {20, 21, 23}  # int8, int2, int4
MONEY_COLUMNS = {"amount_minor", "balance_minor", "balance_after_minor"}


class StreamStopped(Exception):
    """The shard's stream cannot go on without an operator."""

    def __init__(self, cause: str, detail: str, *, lsn: int | None = None, commit_lsn: int | None = None) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail
        self.lsn = lsn  # where the store's knowledge ends (a gap) or the change that failed
        self.commit_lsn = commit_lsn  # of the transaction that failed, for `cdc_skip`

    def as_status(self) -> dict[str, Any]:
        return {
            "stopped": self.cause,
            "stopped_detail": self.detail,
            "stopped_lsn": lsn_to_str(self.lsn) if self.lsn is not None else None,
            "stopped_commit_lsn": lsn_to_str(self.commit_lsn) if self.commit_lsn is not None else None,
        }


class SlotGap(StreamStopped):
    """slot_missing | slot_lost | slot_ahead | slot_moved | slot_behind | foreign_slot."""


class SchemaDrift(StreamStopped):
    def __init__(self, table: str, detail: str) -> None:
        super().__init__("schema_drift", detail)
        self.table = table


class UndecodableChange(StreamStopped):
    def __init__(self, detail: str, *, lsn: int, commit_lsn: int | None) -> None:
        super().__init__("undecodable", detail, lsn=lsn, commit_lsn=commit_lsn)


class _Recorder(dict[str, Any]):
    """Records the columns a projection reads."""

    def __missing__(self, key: str) -> Any:
        value: Any = EPOCH if key.endswith("_at") else 0  # what the projection's converters accept
        self[key] = value
        return value


def required_columns(table: TypedTable) -> frozenset[str]:
    """The source columns `table`'s projection reads."""
    seen = _Recorder()
    table.project(seen)
    return frozenset(seen)


REQUIRED_COLUMNS: dict[str, frozenset[str]] = {source: required_columns(t) for source, t in TYPED_TABLES.items()}


def check_relation(relation: Relation, shard: str) -> None:
    """Raise SchemaDrift if a captured table lacks a column the store needs, or a money
    column is no longer an integer. Extra columns are fine: the raw change log keeps them."""
    required = REQUIRED_COLUMNS.get(relation.name)
    if required is None:
        return
    types = {column.name: column.type_oid for column in relation.columns}
    missing = sorted(required - set(types))
    if missing:
        raise SchemaDrift(
            relation.name,
            f"schema drift on {shard}: table {relation.name} has no column {', '.join(missing)} (renamed or dropped?)"
            f"; its columns are {', '.join(types)}",
        )
    retyped = sorted(c for c in MONEY_COLUMNS & required if types[c] not in INTEGER_TYPES)
    if retyped:
        raise SchemaDrift(
            relation.name,
            f"schema drift on {shard}: column {relation.name}.{retyped[0]} is no longer an integer"
            f" (type oid {types[retyped[0]]}); money must stay BIGINT minor units",
        )
