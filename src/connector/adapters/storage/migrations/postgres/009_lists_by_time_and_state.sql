-- 009 (PostgreSQL): the console's lists; see ../009_lists_by_time_and_state.sql.
CREATE INDEX negotiations_by_updated ON negotiations (updated_at);
CREATE INDEX negotiations_by_state ON negotiations (state, updated_at);
CREATE INDEX transfers_by_updated ON transfers (updated_at);
CREATE INDEX transfers_by_state ON transfers (state, updated_at);
CREATE INDEX agreements_by_created ON agreements (created_at);
