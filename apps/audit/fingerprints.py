"""The tables `reconcile` compares, and the same row fingerprint computed in PostgreSQL and ClickHouse.

A row's canonical text is the concatenation of its fields, each as `<byte length>:<text>`
(`~` for NULL), so no two different rows share one. Field texts are identical on both
sides: UUIDs in their lowercase hyphenated form, integers in decimal, timestamps in UTC as
`YYYY-MM-DD HH:MM:SS.ffffff`. A row's hash is the first 60 bits of the md5 of that text
(a BIGINT in PostgreSQL, a UInt64 in ClickHouse), and a bucket's fingerprint per table is
(rows, money sum, sum of hashes), summed exactly (numeric, Int128): a missing, extra or
changed row changes it except with probability ~2^-60.
"""

from __future__ import annotations

from dataclasses import dataclass

UUID, INT, TEXT, TS = "uuid", "int", "text", "ts"


@dataclass(frozen=True)
class Field:
    label: str  # the audit store's column name, used in reports
    pg: str  # the shard's column
    kind: str
    nullable: bool = False

    def pg_text(self) -> str:
        if self.kind == TS:
            return f"to_char({self.pg} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
        return f"{self.pg}::text"

    def ch_text(self) -> str:
        return f"toString({self.label})"


@dataclass(frozen=True)
class Table:
    """One compared table: the shard's and the store's names, key, bucket column and fields."""

    name: str  # as reports say it
    row_label: str  # one of its rows, in reports
    pg_table: str
    ch_table: str
    key: tuple[str, ...]  # the store's key columns (labels), in the order both sides sort by
    bucket: str  # the label of the column whose id carries the row's bucket
    money: str | None  # the label of the amount summed per bucket
    updated: bool  # rows change after insert (wallets, transfers); else insert-only
    fields: tuple[Field, ...]
    sort_prefix: str  # the first column of the store table's sort key (its primary index)

    def field(self, label: str) -> Field:
        return next(f for f in self.fields if f.label == label)

    # -- PostgreSQL --------------------------------------------------------------------

    def pg_bucket(self) -> str:
        return f"sharding_bucket({self.field(self.bucket).pg})"

    def pg_key(self) -> str:
        return ", ".join(self.field(k).pg for k in self.key)

    def pg_canonical(self) -> str:
        parts = [f"coalesce(octet_length({f.pg_text()})::text || ':' || {f.pg_text()}, '~')" for f in self.fields]
        return " || ".join(parts)

    def pg_hash(self) -> str:
        return f"('x' || left(md5({self.pg_canonical()}), 15))::bit(60)::bigint"

    def pg_money(self) -> str:
        return self.field(self.money).pg if self.money else "0"

    # -- ClickHouse --------------------------------------------------------------------

    def ch_bucket(self) -> str:
        return ch_bucket(self.bucket)

    def ch_canonical(self) -> str:
        parts = [f"ifNull(concat(toString(length({f.ch_text()})), ':', {f.ch_text()}), '~')" for f in self.fields]
        return f"concat({', '.join(parts)})"

    def ch_hash(self) -> str:
        return f"bitShiftRight(reinterpretAsUInt64(reverse(substring(MD5({self.ch_canonical()}), 1, 8))), 4)"

    def ch_money(self) -> str:
        return f"toInt128({self.money})" if self.money else "toInt128(0)"

    def ch_order(self) -> str:
        """The store's key order, equal to PostgreSQL's: a UUID as its 128-bit number (byte order)."""
        return ", ".join(f"toUInt128({k})" if self.field(k).kind == UUID else k for k in self.key)


def ch_bucket(column: str) -> str:
    """The bucket of an id in ClickHouse: the 12 bits after the version digit (apps.sharding.ids)."""
    return f"toUInt16(bitAnd(bitShiftRight(toUInt128({column}), 64), 4095))"


TABLES: tuple[Table, ...] = (
    Table(
        "wallets", "wallet", "ledger_wallet", "audit.wallets", ("wallet_id",), "wallet_id", "balance_minor", True,
        (
            Field("wallet_id", "id", UUID), Field("owner_id", "owner_id", INT), Field("currency", "currency", TEXT),
            Field("balance_minor", "balance_minor", INT), Field("status", "status", TEXT),
            Field("last_entry_seq", "last_entry_seq", INT), Field("created_at", "created_at", TS),
            Field("updated_at", "updated_at", TS), Field("description", "description", TEXT, nullable=True),
            Field("metadata", "metadata", TEXT, nullable=True),
        ),
        "wallet_id",
    ),
    Table(
        "entries", "entry", "ledger_entry", "audit.ledger_entries", ("entry_id",), "wallet_id", "amount_minor", False,
        (
            Field("entry_id", "id", UUID), Field("wallet_id", "wallet_id", UUID), Field("entry_seq", "seq", INT),
            Field("reference", "reference", TEXT), Field("kind", "kind", TEXT),
            Field("amount_minor", "amount_minor", INT), Field("balance_after_minor", "balance_after_minor", INT),
            Field("created_at", "created_at", TS),
        ),
        "wallet_id",
    ),
    Table(
        "transfers", "transfer", "transfers_transfer", "audit.transfers", ("transfer_id",), "transfer_id",
        "amount_minor", True,
        (
            Field("transfer_id", "id", UUID), Field("client_id", "client_id", INT), Field("payer_id", "payer_id", UUID),
            Field("payee_id", "payee_id", UUID), Field("amount_minor", "amount_minor", INT),
            Field("currency", "currency", TEXT), Field("status", "status", TEXT),
            Field("failure_reason", "failure_reason", TEXT, nullable=True), Field("attempts", "attempts", INT),
            Field("parked_at", "parked_at", TS, nullable=True), Field("created_at", "created_at", TS),
            Field("updated_at", "updated_at", TS), Field("refund_of", "refund_of", UUID, nullable=True),
            Field("amount_refunded", "amount_refunded", INT), Field("description", "description", TEXT, nullable=True),
            Field("metadata", "metadata", TEXT, nullable=True),
        ),
        "transfer_id",
    ),
    Table(
        "transfer events", "transfer event", "transfers_event", "audit.transfer_transitions",
        ("transfer_id", "event_id"), "transfer_id", None, False,
        (
            Field("transfer_id", "transfer_id", UUID), Field("event_id", "id", INT),
            Field("from_status", "from_status", TEXT, nullable=True), Field("to_status", "to_status", TEXT),
            Field("reason", "reason", TEXT, nullable=True), Field("created_at", "created_at", TS),
        ),
        "transfer_id",
    ),
    Table(
        "payee credits", "payee credit", "transfers_payee_credit", "audit.payee_credits", ("transfer_id",), "payee_id",
        "amount_minor", False,
        (
            Field("transfer_id", "transfer_id", UUID), Field("payee_id", "payee_id", UUID),
            Field("amount_minor", "amount_minor", INT), Field("outcome", "outcome", TEXT),
            Field("reason", "reason", TEXT, nullable=True), Field("created_at", "created_at", TS),
        ),
        "transfer_id",
    ),
)  # fmt: skip
