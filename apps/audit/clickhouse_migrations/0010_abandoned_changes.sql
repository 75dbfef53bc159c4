-- What a shard's history no longer holds: when a shard comes back on a history that left the
-- one this store followed before the store's position (restored to a point in time, or failed
-- over to a standby that was behind), `cdc_resnapshot` moves the store's changes of the shard
-- past the point where the histories part (`branch_lsn`) out of audit.changes and the typed
-- tables, into this table: they are the changes the shard lost, kept for auditors and for
-- `manage.py shard_replay`, which applies them again. `generation` is the store's generation
-- of the shard they belonged to (one per snapshot), `timeline` the one the store followed.
CREATE TABLE IF NOT EXISTS audit.abandoned_changes
(
    shard LowCardinality(String),
    generation UInt32,
    timeline UInt32,
    branch_lsn UInt64,
    commit_lsn UInt64,
    seq UInt32,
    xid UInt32,
    commit_time DateTime64(6, 'UTC'),
    table_name LowCardinality(String),
    op Enum8('insert' = 1, 'update' = 2, 'delete' = 3, 'truncate' = 4, 'snapshot' = 5),
    old_row Nullable(String),
    new_row Nullable(String),
    abandoned_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (shard, generation, commit_lsn, seq)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;
