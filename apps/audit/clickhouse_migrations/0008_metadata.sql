-- Wallets and transfers carry their clients' `description` and `metadata` (a JSON object, as
-- the shard's jsonb prints it). Rows stored before carry the shards' own default (NULL), so
-- fingerprints agree without a backfill.
ALTER TABLE audit.wallets ADD COLUMN IF NOT EXISTS description Nullable(String) AFTER updated_at;
ALTER TABLE audit.wallets ADD COLUMN IF NOT EXISTS metadata Nullable(String) AFTER description;
ALTER TABLE audit.transfers ADD COLUMN IF NOT EXISTS description Nullable(String) AFTER amount_refunded;
ALTER TABLE audit.transfers ADD COLUMN IF NOT EXISTS metadata Nullable(String) AFTER description;
