-- 004 (PostgreSQL, as SQLite): the foreign key agreements.negotiation_id gets its index. Without it SQLite scans
-- agreements whenever a negotiation row is deleted or replaced (O(n) per write).
CREATE INDEX agreements_by_negotiation ON agreements (negotiation_id);
