-- 007 (PostgreSQL): the audit trail; see ../007_audit.sql. ``audit_entries`` is append-only.
CREATE TABLE audit_entries (
    seq     BIGINT PRIMARY KEY,
    digest  TEXT NOT NULL,
    hash    TEXT NOT NULL,
    body    BYTEA NOT NULL
);
CREATE FUNCTION audit_entries_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only';
END;
$$;
CREATE TRIGGER audit_entries_append_only BEFORE UPDATE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_entries_refuse_update();
CREATE TABLE audit_refs (
    ref  TEXT NOT NULL,
    seq  BIGINT NOT NULL,
    PRIMARY KEY (ref, seq)
);
CREATE TABLE audit_checkpoints (
    seq  BIGINT PRIMARY KEY,
    at   DOUBLE PRECISION NOT NULL,
    jws  TEXT NOT NULL
);
CREATE TABLE audit_evidence (
    digest   TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    content  BYTEA NOT NULL
);
