-- The audit store: a raw change log of every replicated row change, typed tables per
-- kind of row, and views auditors query. Every table is a ReplacingMergeTree, so a
-- transaction the CDC reader writes twice (a crash before its position was confirmed)
-- collapses: read with FINAL, or through the views, which do. Inserts fsync their parts:
-- the reader confirms a position to PostgreSQL once the insert returned, so the data
-- must survive a machine crash, not only a process crash.
CREATE DATABASE IF NOT EXISTS audit;

-- Every row change, as streamed: keyed on (shard, commit_lsn, seq), the change's
-- position in its shard's WAL. Rows are JSON objects; money stays a JSON integer.
CREATE TABLE IF NOT EXISTS audit.changes
(
    shard LowCardinality(String),
    commit_lsn UInt64,
    seq UInt32,
    xid UInt32,
    commit_time DateTime64(6, 'UTC'),
    table_name LowCardinality(String),
    op Enum8('insert' = 1, 'update' = 2, 'delete' = 3, 'truncate' = 4, 'snapshot' = 5),
    old_row Nullable(String),
    new_row Nullable(String),
    received_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (shard, commit_lsn, seq)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;

-- ledger_entry: one row per entry (entries are never updated). version orders the
-- changes of one row: (commit_lsn << 32) | seq.
CREATE TABLE IF NOT EXISTS audit.ledger_entries
(
    shard LowCardinality(String),
    entry_id UUID,
    wallet_id UUID,
    entry_seq Int64,
    reference String,
    kind LowCardinality(String),
    amount_minor Int64,
    balance_after_minor Int64,
    created_at DateTime64(6, 'UTC'),
    commit_lsn UInt64,
    seq UInt32,
    commit_time DateTime64(6, 'UTC'),
    version UInt128,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (wallet_id, entry_seq, entry_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;

-- ledger_wallet: the latest state of each wallet.
CREATE TABLE IF NOT EXISTS audit.wallets
(
    shard LowCardinality(String),
    wallet_id UUID,
    owner_id Int64,
    currency LowCardinality(String),
    balance_minor Int64,
    status LowCardinality(String),
    last_entry_seq Int64,
    created_at DateTime64(6, 'UTC'),
    updated_at DateTime64(6, 'UTC'),
    commit_lsn UInt64,
    seq UInt32,
    commit_time DateTime64(6, 'UTC'),
    version UInt128,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version)
ORDER BY wallet_id
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;

-- transfers_transfer: the latest state of each transfer.
CREATE TABLE IF NOT EXISTS audit.transfers
(
    shard LowCardinality(String),
    transfer_id UUID,
    client_id Int64,
    payer_id UUID,
    payee_id UUID,
    amount_minor Int64,
    currency LowCardinality(String),
    status LowCardinality(String),
    failure_reason Nullable(String),
    attempts Int32,
    parked_at Nullable(DateTime64(6, 'UTC')),
    created_at DateTime64(6, 'UTC'),
    updated_at DateTime64(6, 'UTC'),
    commit_lsn UInt64,
    seq UInt32,
    commit_time DateTime64(6, 'UTC'),
    version UInt128,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version)
ORDER BY transfer_id
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;

-- transfers_event: one row per status transition.
CREATE TABLE IF NOT EXISTS audit.transfer_transitions
(
    shard LowCardinality(String),
    transfer_id UUID,
    event_id Int64,
    from_status Nullable(String),
    to_status LowCardinality(String),
    reason Nullable(String),
    created_at DateTime64(6, 'UTC'),
    commit_lsn UInt64,
    seq UInt32,
    commit_time DateTime64(6, 'UTC'),
    version UInt128,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (transfer_id, event_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;

-- transfers_payee_credit: the payee shard's final outcome of each cross-shard credit.
CREATE TABLE IF NOT EXISTS audit.payee_credits
(
    shard LowCardinality(String),
    transfer_id UUID,
    payee_id UUID,
    amount_minor Int64,
    outcome LowCardinality(String),
    reason Nullable(String),
    created_at DateTime64(6, 'UTC'),
    commit_lsn UInt64,
    seq UInt32,
    commit_time DateTime64(6, 'UTC'),
    version UInt128,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version)
ORDER BY transfer_id
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;

-- The CDC reader's bookkeeping: whether this store holds a slot's complete initial
-- snapshot (a row with completed = 0 is written before the copy starts).
CREATE TABLE IF NOT EXISTS audit.cdc_snapshots
(
    shard LowCardinality(String),
    slot_name String,
    consistent_lsn UInt64,
    rows UInt64,
    completed UInt8,
    completed_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(completed_at)
ORDER BY (shard, slot_name)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;

-- Balance per wallet, beside the sum and count of its entries (they must agree).
-- Sums are Int128: a total of many Int64 balances must not wrap. No SETTINGS clauses:
-- auditors query with readonly=1, which forbids changing any setting. A wallet without
-- entries joins as zeros (join_use_nulls is off).
CREATE VIEW IF NOT EXISTS audit.wallet_balances AS
SELECT
    w.wallet_id AS wallet_id,
    w.shard AS shard,
    w.owner_id AS owner_id,
    w.currency AS currency,
    w.status AS status,
    w.balance_minor AS balance_minor,
    w.last_entry_seq AS last_entry_seq,
    coalesce(e.entries_sum_minor, toInt128(0)) AS entries_sum_minor,
    coalesce(e.entry_count, toUInt64(0)) AS entry_count,
    w.updated_at AS updated_at
FROM (SELECT * FROM audit.wallets FINAL WHERE is_deleted = 0) AS w
LEFT JOIN
(
    SELECT wallet_id, sum(toInt128(amount_minor)) AS entries_sum_minor, count() AS entry_count
    FROM audit.ledger_entries FINAL
    WHERE is_deleted = 0
    GROUP BY wallet_id
) AS e ON e.wallet_id = w.wallet_id;

-- Per currency: balances, the movements that explain them, and the money in flight
-- (debited, neither credited nor refunded). Conservation:
--   balances_minor = deposits_minor - withdrawals_minor - in_flight_minor
CREATE VIEW IF NOT EXISTS audit.currency_totals AS
SELECT
    w.currency AS currency,
    count() AS wallets,
    sum(toInt128(w.balance_minor)) AS balances_minor,
    sum(coalesce(e.deposits, toInt128(0))) AS deposits_minor,
    sum(coalesce(e.withdrawals, toInt128(0))) AS withdrawals_minor,
    sum(coalesce(e.debits, toInt128(0))) AS debits_minor,
    sum(coalesce(e.credits, toInt128(0))) AS credits_minor,
    sum(coalesce(e.refunds, toInt128(0))) AS refunds_minor,
    debits_minor - credits_minor - refunds_minor AS in_flight_minor,
    deposits_minor - withdrawals_minor - in_flight_minor AS expected_balances_minor,
    balances_minor = expected_balances_minor AS conserved
FROM (SELECT * FROM audit.wallets FINAL WHERE is_deleted = 0) AS w
LEFT JOIN
(
    SELECT
        wallet_id,
        sumIf(toInt128(amount_minor), kind = 'deposit') AS deposits,
        -sumIf(toInt128(amount_minor), kind = 'withdrawal') AS withdrawals,
        -sumIf(toInt128(amount_minor), kind = 'debit') AS debits,
        sumIf(toInt128(amount_minor), kind = 'credit') AS credits,
        sumIf(toInt128(amount_minor), kind = 'refund') AS refunds
    FROM audit.ledger_entries FINAL
    WHERE is_deleted = 0
    GROUP BY wallet_id
) AS e ON e.wallet_id = w.wallet_id
GROUP BY w.currency;
