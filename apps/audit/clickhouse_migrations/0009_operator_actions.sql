-- The operators' trail (the control database's operators_action: the admin's actions and the
-- command line's), copied by the CDC process as each action is recorded and again when it
-- ends, so that it is kept where the application cannot edit it. `version` is 0 while the
-- action runs (outcome 'pending') and 1 once it ended; the ended row replaces the running one.
-- A row changed in the control database after it ended is not copied again.
CREATE TABLE IF NOT EXISTS audit.operator_actions
(
    id Int64,
    actor LowCardinality(String),
    action LowCardinality(String),
    target_id Nullable(UUID),
    subject String,
    shard LowCardinality(String),
    reason String,
    outcome LowCardinality(String),
    detail String,
    created_at DateTime64(6, 'UTC'),
    finished_at Nullable(DateTime64(6, 'UTC')),
    copied_at DateTime64(6, 'UTC'),
    version UInt8
)
ENGINE = ReplacingMergeTree(version)
ORDER BY id
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;
