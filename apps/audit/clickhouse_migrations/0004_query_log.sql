-- Every query an auditor sent to the embedded endpoint (apps/audit/query_log.py), refused
-- ones included: who (`auditor`, the account that logged in) and from where, the text and
-- parameters as sent, when it started, how long it ran, the rows it returned and read, and
-- ClickHouse's error code and message (0 and '' when it succeeded). Requests that did not
-- log in are not here (nothing of theirs ran); the CDC process logs them. Auditors read this
-- table like the others. A plain MergeTree: each row is written once, never replayed.
CREATE TABLE IF NOT EXISTS audit.query_log
(
    time DateTime64(6, 'UTC'),
    query_id String,
    auditor LowCardinality(String),
    client_address String,
    query String,
    parameters Map(String, String),
    format LowCardinality(String),
    duration_ms UInt64,
    result_rows UInt64,
    result_bytes UInt64,
    read_rows UInt64,
    error_code Int32,
    error String
)
ENGINE = MergeTree
ORDER BY time
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;
