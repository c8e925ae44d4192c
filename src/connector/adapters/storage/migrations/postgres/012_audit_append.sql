-- 012 (PostgreSQL): ``audit_append``, a step's audit entries numbered, chained and written
-- inside the statement that saves its process row, so that a step is one statement, one
-- round trip, with no BEGIN and COMMIT of its own (docs/storage.md).
--
-- It takes the chain's lock and head (``audit_chain_head``, migration 011), then for each
-- entry: body = prefix || seq || '}' (the prefix is the canonical JSON the connector made,
-- up to ``"seq":``, core/audit.py ``entry_prefix``), digest = SHA-256(body) and hash =
-- SHA-256(previous hash || digest), both as lowercase hex (core/audit.py ``link``), and
-- inserts it; the step's own evidence goes with its first entry, shared evidence to
-- ``audit_shared`` once. Returns how many entries it wrote.
--
-- When every entry was pruned, the head is inside the kept checkpoint's JWS, which this
-- function does not read: it raises SQLSTATE CNA01 and the connector appends that step in
-- a transaction instead, reading the head in Python (once: afterwards there are entries).
CREATE FUNCTION audit_append(lock_key BIGINT, prefixes BYTEA[], ref1s TEXT[], ref2s TEXT[],
                             evidence BYTEA, shared_digests TEXT[], shared_kinds TEXT[],
                             shared_contents BYTEA[])
RETURNS INTEGER
VOLATILE LANGUAGE plpgsql AS $$
DECLARE
    head RECORD;
    n INTEGER := coalesce(array_length(prefixes, 1), 0);
    s BIGINT;
    h TEXT;
    body BYTEA;
    d TEXT;
BEGIN
    SELECT * INTO head FROM audit_chain_head(lock_key);
    IF head.seq IS NOT NULL THEN
        s := head.seq;
        h := head.hash;
    ELSIF head.jws IS NOT NULL THEN
        RAISE EXCEPTION 'the audit chain goes on from a checkpoint' USING ERRCODE = 'CNA01';
    ELSE
        s := 0;
        h := repeat('0', 64);
    END IF;
    FOR i IN 1..n LOOP
        s := s + 1;
        body := prefixes[i] || convert_to(s::text || '}', 'UTF8');
        d := encode(sha256(body), 'hex');
        h := encode(sha256(convert_to(h || d, 'UTF8')), 'hex');
        INSERT INTO audit_entries (seq, digest, hash, body, ref1, ref2, evidence)
        VALUES (s, d, h, body, ref1s[i], ref2s[i], CASE WHEN i = 1 THEN evidence END);
    END LOOP;
    INSERT INTO audit_shared (digest, kind, content)
    SELECT * FROM unnest(shared_digests, shared_kinds, shared_contents)
    ON CONFLICT DO NOTHING;
    RETURN n;
END;
$$;
