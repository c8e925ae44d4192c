-- 010 (PostgreSQL): outbox claims; see ../010_outbox_claims.sql. Another replica takes the
-- rows whose claim ran out with FOR UPDATE SKIP LOCKED, so two never take the same row.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claim_until DOUBLE PRECISION;
CREATE INDEX outbox_by_claim_until ON outbox (claim_until);
