-- The entries of transfers (debits, credits, refunds) keyed by their transfer, fed by
-- every insert into audit.ledger_entries (streamed rows, snapshots, deletions: each is an
-- insert there), so the pairing of transfers with their entries reads a range of transfer
-- ids through the primary key instead of every entry (audit.ledger_entries is ordered by
-- wallet). Same versions and deletion flags as the source rows: FINAL here keeps what FINAL
-- there keeps, since an entry's transfer never changes.
CREATE TABLE IF NOT EXISTS audit.transfer_entries
(
    transfer_id UUID,
    entry_id UUID,
    wallet_id UUID,
    kind LowCardinality(String),
    amount_minor Int64,
    version UInt128,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (transfer_id, entry_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS audit.transfer_entries_feed TO audit.transfer_entries AS
SELECT toUUIDOrZero(reference) AS transfer_id, entry_id, wallet_id, kind, amount_minor, version, is_deleted
FROM audit.ledger_entries
WHERE kind IN ('debit', 'credit', 'refund');

-- The entries stored before the feed existed (run again after an interruption: the copies
-- carry the same versions, so FINAL keeps one).
INSERT INTO audit.transfer_entries
SELECT toUUIDOrZero(reference), entry_id, wallet_id, kind, amount_minor, version, is_deleted
FROM audit.ledger_entries
WHERE kind IN ('debit', 'credit', 'refund');
