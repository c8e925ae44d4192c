-- The registry's own schema (numbered like the connector's, applied by RegistryStore).
-- One row per publisher: its latest verified snapshot. `version` is this registry's change
-- sequence: replicas pull `WHERE version > ?`.
CREATE TABLE entries (
    publisher  TEXT PRIMARY KEY,
    version    INTEGER NOT NULL UNIQUE,
    etag       TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    endpoint   TEXT NOT NULL,
    jws        TEXT NOT NULL
);
CREATE INDEX entries_expiry ON entries (expires_at);

-- The datasets of every entry, denormalised for search (expiry copied from the entry).
CREATE TABLE datasets (
    id          INTEGER PRIMARY KEY,
    publisher   TEXT NOT NULL,
    dataset_id  TEXT NOT NULL,
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    keywords    TEXT NOT NULL,   -- JSON array
    themes      TEXT NOT NULL,   -- JSON array
    formats     TEXT NOT NULL,   -- JSON array
    expires_at  INTEGER NOT NULL
);
CREATE INDEX datasets_publisher ON datasets (publisher);

-- Facet values, one row per (dataset, kind, value); kind is keyword, theme or format.
CREATE TABLE terms (
    dataset INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    value   TEXT NOT NULL
);
CREATE INDEX terms_value ON terms (kind, value, dataset);
CREATE INDEX terms_dataset ON terms (dataset);

-- Full text over title, description and keywords (SQLite FTS5, external content).
CREATE VIRTUAL TABLE datasets_fts USING fts5 (
    title, description, keywords,
    content = 'datasets', content_rowid = 'id', tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER datasets_ai AFTER INSERT ON datasets BEGIN
    INSERT INTO datasets_fts (rowid, title, description, keywords)
    VALUES (new.id, new.title, new.description, new.keywords);
END;
CREATE TRIGGER datasets_ad AFTER DELETE ON datasets BEGIN
    INSERT INTO datasets_fts (datasets_fts, rowid, title, description, keywords)
    VALUES ('delete', old.id, old.title, old.description, old.keywords);
END;

-- How far this registry has pulled each peer registry's changes.
CREATE TABLE replication (
    peer  TEXT PRIMARY KEY,
    since INTEGER NOT NULL
);
