-- 007: the audit trail (core/audit.py, docs/audit.md). ``audit_entries`` is append-only: the
-- trigger refuses an UPDATE; only ``connector audit prune`` deletes (the oldest entries, up to a
-- signed checkpoint). Each row carries, beside the chained ``body``, the ids it concerns
-- (``ref1``, ``ref2``: ``audit show``) and the evidence kept outside the chain that its body
-- names by digest (``evidence``: the peer's signed token and the body of a negotiation
-- message, the agreement text), so that one step's audit costs one more statement in the
-- store's group commit, not one per table.
CREATE TABLE audit_entries (
    seq       INTEGER PRIMARY KEY,
    digest    TEXT NOT NULL,
    hash      TEXT NOT NULL,
    body      BLOB NOT NULL,
    ref1      TEXT,
    ref2      TEXT,
    evidence  BLOB
);
CREATE INDEX audit_entries_by_ref1 ON audit_entries (ref1) WHERE ref1 IS NOT NULL;
CREATE INDEX audit_entries_by_ref2 ON audit_entries (ref2) WHERE ref2 IS NOT NULL;
CREATE TRIGGER audit_entries_append_only BEFORE UPDATE ON audit_entries
BEGIN
    SELECT RAISE(ABORT, 'audit entries are append-only');
END;
CREATE TABLE audit_checkpoints (
    seq  INTEGER PRIMARY KEY,
    at   REAL NOT NULL,
    jws  TEXT NOT NULL
);
-- Evidence many entries share (a peer's DID document, a policy text), written once.
CREATE TABLE audit_shared (
    digest   TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    content  BLOB NOT NULL
) WITHOUT ROWID;
