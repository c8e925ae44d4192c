-- 002 (PostgreSQL, as SQLite): find the transfers under an agreement (its revocation stops them all).
CREATE INDEX transfers_by_agreement ON transfers (agreement_id);
