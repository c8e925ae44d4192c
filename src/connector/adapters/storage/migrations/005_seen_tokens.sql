-- 005: token ids (jti) already accepted, so that a replay is refused across a restart too.
-- ``until`` (epoch seconds) is the token's expiry plus the clock leeway; past it the row is
-- purged. Written behind the verifier's in-memory check, in the writer's group commit.
CREATE TABLE seen_tokens (
    jti    TEXT PRIMARY KEY,
    until  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX seen_tokens_by_until ON seen_tokens (until);
