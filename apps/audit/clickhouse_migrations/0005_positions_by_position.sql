-- Per shard, the WAL position up to which every change is in this store (what
-- audit.cdc_positions held, which kept the row with the latest wall-clock `updated_at`: a
-- clock stepped back would have made an older position win, on reads and in merges).
-- Here the newest position is the highest `version = (generation << 64) | confirmed_lsn`:
-- along one slot the position only rises; `generation` counts the store's snapshots of the
-- shard (a re-snapshot may start lower, on a server that failed over). Equal versions (a
-- backfill records the same position with more tables) keep the row inserted last.
-- `timeline` is the shard's timeline when the position was recorded: a reader that finds
-- the shard on a history without it stops (apps/audit/reader.py, `_check_history`).
CREATE TABLE IF NOT EXISTS audit.stream_positions
(
    shard LowCardinality(String),
    slot_name String,
    confirmed_lsn UInt64,
    stream_epoch UInt64,
    tables Array(String),
    timeline UInt32,
    generation UInt32,
    version UInt128,
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY shard
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;

-- The positions recorded before this table existed (timeline unknown: 0).
INSERT INTO audit.stream_positions
SELECT shard, slot_name, confirmed_lsn, stream_epoch, tables, 0, 0, toUInt128(confirmed_lsn), updated_at
FROM audit.cdc_positions FINAL
WHERE shard NOT IN (SELECT shard FROM audit.stream_positions);
