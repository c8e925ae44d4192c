-- 007: the audit trail (core/audit.py, docs/audit.md). ``audit_entries`` is append-only: the
-- triggers refuse an UPDATE; only ``connector audit prune`` deletes (the oldest entries, up to a
-- signed checkpoint). ``audit_refs`` indexes entries by the ids they concern (``audit show``).
-- ``audit_evidence`` and ``audit_shared`` keep, outside the chain, what an entry only names by
-- digest: the peer's signed token and the body of a negotiation message, the agreement text,
-- the peer's DID document, the policy text of an agreement.
CREATE TABLE audit_entries (
    seq     INTEGER PRIMARY KEY,
    digest  TEXT NOT NULL,
    hash    TEXT NOT NULL,
    body    BLOB NOT NULL
);
CREATE TRIGGER audit_entries_append_only BEFORE UPDATE ON audit_entries
BEGIN
    SELECT RAISE(ABORT, 'audit entries are append-only');
END;
CREATE TABLE audit_refs (
    ref  TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    PRIMARY KEY (ref, seq)
) WITHOUT ROWID;
CREATE TABLE audit_checkpoints (
    seq  INTEGER PRIMARY KEY,
    at   REAL NOT NULL,
    jws  TEXT NOT NULL
);
-- Kept with the entry naming it, appended in entry order (no index on a random digest:
-- these rows come with every negotiation message); looked up through their entry.
CREATE TABLE audit_evidence (
    seq      INTEGER NOT NULL,
    digest   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    content  BLOB NOT NULL
);
CREATE INDEX audit_evidence_by_seq ON audit_evidence (seq);
-- Evidence many entries share (a peer's DID document, a policy text), written once.
CREATE TABLE audit_shared (
    digest   TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    content  BLOB NOT NULL
) WITHOUT ROWID;
