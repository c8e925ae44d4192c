-- 001: negotiations, agreements, transfers and the outbox.
-- Each process row keeps the indexed columns beside the full record (msgspec JSON in body).
CREATE TABLE negotiations (
    id            TEXT PRIMARY KEY,          -- our own pid
    role          TEXT NOT NULL,
    state         TEXT NOT NULL,
    consumer_pid  TEXT NOT NULL,
    provider_pid  TEXT,
    counterparty  TEXT,
    dataset_id    TEXT NOT NULL,
    updated_at    REAL NOT NULL,
    body          BLOB NOT NULL
);
CREATE INDEX negotiations_by_consumer_pid ON negotiations (consumer_pid);

CREATE TABLE agreements (
    id             TEXT PRIMARY KEY,
    negotiation_id TEXT NOT NULL REFERENCES negotiations (id),
    role           TEXT NOT NULL,
    dataset_id     TEXT NOT NULL,
    assigner       TEXT NOT NULL,
    assignee       TEXT NOT NULL,
    created_at     REAL NOT NULL,
    body           BLOB NOT NULL
);

CREATE TABLE transfers (
    id            TEXT PRIMARY KEY,          -- our own pid
    role          TEXT NOT NULL,
    state         TEXT NOT NULL,
    consumer_pid  TEXT NOT NULL,
    provider_pid  TEXT,
    counterparty  TEXT,
    agreement_id  TEXT NOT NULL,
    token_hash    TEXT,
    updated_at    REAL NOT NULL,
    body          BLOB NOT NULL
);
CREATE INDEX transfers_by_consumer_pid ON transfers (consumer_pid);
CREATE UNIQUE INDEX transfers_by_token ON transfers (token_hash) WHERE token_hash IS NOT NULL;

-- Messages to peers, written in the same transaction as the state change that caused them.
CREATE TABLE outbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    process_id     TEXT NOT NULL,
    url            TEXT NOT NULL,
    audience       TEXT NOT NULL,
    body           BLOB NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_attempt   REAL NOT NULL,
    last_error     TEXT
);

-- Uses of each agreement on the data plane, counted atomically (ODRL count constraints).
CREATE TABLE agreement_uses (
    agreement_id  TEXT PRIMARY KEY,
    uses          INTEGER NOT NULL
);
