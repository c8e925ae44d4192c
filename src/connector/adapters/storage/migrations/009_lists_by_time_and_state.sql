-- The console's lists (Store.page_*, state_counts): newest first and counted by state from
-- an index, so a page of 50 costs the same with 10,000 processes stored as with 100
-- (bench/console.py).
CREATE INDEX negotiations_by_updated ON negotiations (updated_at);
CREATE INDEX negotiations_by_state ON negotiations (state, updated_at);
CREATE INDEX transfers_by_updated ON transfers (updated_at);
CREATE INDEX transfers_by_state ON transfers (state, updated_at);
CREATE INDEX agreements_by_created ON agreements (created_at);
