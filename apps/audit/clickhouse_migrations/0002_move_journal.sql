-- Bucket moves, as each shard journalled them (its sharding_move_marker table): a 'fence'
-- on the source when the range stopped taking writes there, an 'own' on the target when
-- the target started serving it, an 'unfence' on the source when a move gave up after
-- fencing. `shard` is the shard that streamed the marker; ids are per shard. `epoch` is
-- the map epoch the move made; 'own' markers set the stream epoch of the typed tables'
-- versions (see apps/audit/epochs.py). `wal_lsn` is the marker's WAL position on its
-- shard, `commit_lsn` its transaction's commit position.
CREATE TABLE IF NOT EXISTS audit.move_journal
(
    shard LowCardinality(String),
    marker_id Int64,
    move_id Int64,
    kind LowCardinality(String),
    first_bucket Int32,
    last_bucket Int32,
    source LowCardinality(String),
    target LowCardinality(String),
    epoch Int64,
    wal_lsn UInt64,
    created_at DateTime64(6, 'UTC'),
    commit_lsn UInt64,
    seq UInt32,
    commit_time DateTime64(6, 'UTC'),
    version UInt128,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (shard, marker_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;
