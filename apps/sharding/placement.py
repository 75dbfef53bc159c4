"""Which column of each sharded table carries the row's bucket, and the SQL names built on it.

Every row of a bucket moves with it: a wallet and its entries and movement keys, a transfer
(its id carries its payer's bucket) and its events and idempotency records, the payee
credits kept on the payee's shard, a hold (its id carries its payer's bucket), and the outbox's
events (each beside the row that caused it). The fence, the mover's copy filter, its
verification and its clean-up all read this one table.
"""

from __future__ import annotations

# In foreign-key order: parents first (copy order); clean-up deletes in reverse.
BUCKET_COLUMNS: dict[str, str] = {
    "ledger_wallet": "id",
    "ledger_entry": "wallet_id",
    "ledger_movement_key": "wallet_id",
    "transfers_transfer": "id",
    "transfers_event": "transfer_id",
    "transfers_idempotency": "payer_id",
    "transfers_payee_credit": "payee_id",
    "holds_hold": "id",  # a hold lives on its payer's shard, with the payer's bucket in its id
    "refunds_refund": "id",  # a refund's record lives beside the original transfer, with its bucket
    "events_event": "id",  # an event lives beside the row that caused it, with that row's bucket
}

# SQLSTATE raised by the fence when a write reaches a shard for a bucket it does not serve.
FENCE_SQLSTATE = "SWF01"
# Advisory lock class of a bucket: writers hold it shared until commit, the fence exclusively.
FENCE_LOCK_CLASS = 21335

# Session setting that lets the mover write rows of buckets the shard does not serve.
MOVER_SETTING = "shardwallet.mover"
# Replication origin of the mover's own writes: the audit stream skips them (a copy is no new
# money and a clean-up no money leaving).
MOVER_ORIGIN = "shardwallet_mover"

# Sequences of the tables keyed by a serial id: each shard draws from its own range, so rows
# copied between shards never collide.
SERIAL_SEQUENCES = ("transfers_event_id_seq", "transfers_idempotency_id_seq", "ledger_movement_key_id_seq")
SEQUENCE_RANGE_BITS = 48


def bucket_sql(column: str) -> str:
    """SQL for the bucket of a sharded id column (see apps.sharding.ids)."""
    return f"sharding_bucket({column})"


def range_filter_sql(table: str, first: int, last: int) -> str:
    """A row filter that PostgreSQL accepts in a publication: built-in immutable functions only."""
    column = BUCKET_COLUMNS[table]
    return (
        f"(((get_byte(uuid_send({column}), 6) & 15) << 8) | get_byte(uuid_send({column}), 7))"
        f" BETWEEN {int(first)} AND {int(last)}"
    )
