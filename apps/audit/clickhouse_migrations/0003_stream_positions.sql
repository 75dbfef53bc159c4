-- The stream's own bookkeeping, kept in the store so that the store, not a file beside
-- the reader, says what it holds.
--
-- store_identity: one id per store, made when the store is first opened. It is part of
-- the name of every replication slot the store's reader creates, and each shard records
-- which store created a slot (table shardwallet_cdc_slot on the shard), so two stores
-- never read one slot.
CREATE TABLE IF NOT EXISTS audit.store_identity
(
    store_id UUID,
    created_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY created_at
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;

-- Per shard, the WAL position up to which every change is in this store. The reader
-- writes it with each batch before it confirms the position to the slot. The slot may
-- still move further by itself over WAL that holds nothing for the store (the client
-- answers the server's keepalives so), but never past a heartbeat the store has not
-- recorded: a slot past one was lost, replaced or read by someone else, and the reader
-- stops instead of skipping the gap (apps/audit/reader.py, `_prepare`).
-- `tables` is the captured set the position covers: a table added to it later has its
-- existing rows copied in. `reconcile` waits for these positions to pass the point it
-- compares at.
CREATE TABLE IF NOT EXISTS audit.cdc_positions
(
    shard LowCardinality(String),
    slot_name String,
    confirmed_lsn UInt64,
    stream_epoch UInt64,
    tables Array(String),
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY shard
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;

-- Changes this store knows it does not hold: a WAL range of one shard that was never
-- read (the slot was lost and an operator re-snapshotted the shard: `resnapshot`) or a
-- transaction an operator told the reader to skip (`skip`). Rows are written when the
-- operator's action runs; they never go away. Auditors and `reconcile` read them.
CREATE TABLE IF NOT EXISTS audit.cdc_gaps
(
    shard LowCardinality(String),
    from_lsn UInt64,
    to_lsn UInt64,
    cause LowCardinality(String),
    resolution LowCardinality(String),
    detail String,
    requested_by String,
    recorded_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(recorded_at)
ORDER BY (shard, from_lsn, to_lsn)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;
