-- 005 (PostgreSQL): token ids (jti) already accepted; see ../005_seen_tokens.sql. The primary
-- key is what refuses a replay across replicas: the first replica to insert a jti wins.
CREATE TABLE seen_tokens (
    jti    TEXT PRIMARY KEY,
    until  BIGINT NOT NULL
);
CREATE INDEX seen_tokens_by_until ON seen_tokens (until);
