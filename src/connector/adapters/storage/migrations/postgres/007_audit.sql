-- 007 (PostgreSQL): the audit trail; see ../007_audit.sql. ``audit_entries`` is append-only:
-- the trigger refuses an UPDATE. Each row carries the ids it concerns (``ref1``, ``ref2``)
-- and the step's own evidence (``evidence``); evidence many entries share is in
-- ``audit_shared``, written once.
CREATE TABLE audit_entries (
    seq       BIGINT PRIMARY KEY,
    digest    TEXT NOT NULL,
    hash      TEXT NOT NULL,
    body      BYTEA NOT NULL,
    ref1      TEXT,
    ref2      TEXT,
    evidence  BYTEA
);
CREATE INDEX audit_entries_by_ref1 ON audit_entries (ref1) WHERE ref1 IS NOT NULL;
CREATE INDEX audit_entries_by_ref2 ON audit_entries (ref2) WHERE ref2 IS NOT NULL;
CREATE FUNCTION audit_entries_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only';
END;
$$;
CREATE TRIGGER audit_entries_append_only BEFORE UPDATE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_entries_refuse_update();
CREATE TABLE audit_checkpoints (
    seq  BIGINT PRIMARY KEY,
    at   DOUBLE PRECISION NOT NULL,
    jws  TEXT NOT NULL
);
CREATE TABLE audit_shared (
    digest   TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    content  BYTEA NOT NULL
);
