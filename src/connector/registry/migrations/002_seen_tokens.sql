-- 002: token ids (jti) the registry accepted from publishers and replicas, kept until they
-- expire so that a replay is refused across a restart too (as the connector's migration 005).
CREATE TABLE seen_tokens (
    jti    TEXT PRIMARY KEY,
    until  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX seen_tokens_by_until ON seen_tokens (until);
