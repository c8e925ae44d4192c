-- 010: an outbox row is claimed by the replica that sends it, until ``claim_until`` (epoch
-- seconds); the replica renews its claims while it runs. A row whose claim ran out (its
-- replica died) is claimed by another (docs/storage.md). One SQLite daemon never lets a claim
-- run out: the columns stay empty.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claim_until REAL;
