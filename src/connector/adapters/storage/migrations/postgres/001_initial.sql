-- 001 (PostgreSQL): negotiations, agreements, transfers and the outbox; see ../001_initial.sql.
-- ``row_seq`` numbers rows in the order they were written (SQLite's rowid).
CREATE TABLE negotiations (
    id            TEXT PRIMARY KEY,
    row_seq       BIGSERIAL NOT NULL,
    role          TEXT NOT NULL,
    state         TEXT NOT NULL,
    consumer_pid  TEXT NOT NULL,
    provider_pid  TEXT,
    counterparty  TEXT,
    dataset_id    TEXT NOT NULL,
    updated_at    DOUBLE PRECISION NOT NULL,
    body          BYTEA NOT NULL
);
CREATE INDEX negotiations_by_consumer_pid ON negotiations (consumer_pid);

CREATE TABLE agreements (
    id             TEXT PRIMARY KEY,
    negotiation_id TEXT NOT NULL REFERENCES negotiations (id),
    role           TEXT NOT NULL,
    dataset_id     TEXT NOT NULL,
    assigner       TEXT NOT NULL,
    assignee       TEXT NOT NULL,
    created_at     DOUBLE PRECISION NOT NULL,
    body           BYTEA NOT NULL
);

CREATE TABLE transfers (
    id            TEXT PRIMARY KEY,
    row_seq       BIGSERIAL NOT NULL,
    role          TEXT NOT NULL,
    state         TEXT NOT NULL,
    consumer_pid  TEXT NOT NULL,
    provider_pid  TEXT,
    counterparty  TEXT,
    agreement_id  TEXT NOT NULL,
    token_hash    TEXT,
    updated_at    DOUBLE PRECISION NOT NULL,
    body          BYTEA NOT NULL
);
CREATE INDEX transfers_by_consumer_pid ON transfers (consumer_pid);
CREATE UNIQUE INDEX transfers_by_token ON transfers (token_hash) WHERE token_hash IS NOT NULL;

CREATE TABLE outbox (
    seq            BIGSERIAL PRIMARY KEY,
    process_id     TEXT NOT NULL,
    url            TEXT NOT NULL,
    audience       TEXT NOT NULL,
    body           BYTEA NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_attempt   DOUBLE PRECISION NOT NULL,
    last_error     TEXT
);

CREATE TABLE agreement_uses (
    agreement_id  TEXT PRIMARY KEY,
    uses          BIGINT NOT NULL
);
