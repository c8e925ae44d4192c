-- 003 (PostgreSQL, as SQLite): a refreshed data token keeps the previous one valid for a grace window.
ALTER TABLE transfers ADD COLUMN prev_token_hash TEXT;
CREATE INDEX transfers_by_prev_token ON transfers (prev_token_hash)
    WHERE prev_token_hash IS NOT NULL;
