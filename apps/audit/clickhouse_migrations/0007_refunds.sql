-- Refunds: a refund is a transfer naming the one it pays back (`refund_of`), and a transfer
-- counts what its refunds that did not fail reserved (`amount_refunded`). Rows stored before
-- carry the shards' own defaults (NULL, 0), so fingerprints agree without a backfill.
ALTER TABLE audit.transfers ADD COLUMN IF NOT EXISTS refund_of Nullable(UUID) AFTER updated_at;
ALTER TABLE audit.transfers ADD COLUMN IF NOT EXISTS amount_refunded Int64 DEFAULT 0 AFTER refund_of;
