-- 011 (PostgreSQL): two functions that take a lock and read, once it is granted, what the
-- lock guards, in one round trip (docs/storage.md).
--
-- ``audit_chain_head(lock_key)`` takes the audit chain's transaction-level
-- advisory lock and returns the head a step chains on from: the last entry's (seq, hash);
-- once every entry was pruned, the kept checkpoint's JWS (``seq`` and ``hash`` NULL: its
-- payload names them); else NULL in all three (GENESIS). A step calls it inside the
-- statement that saves its process row, so the lock and the head cost no round trip of
-- their own (docs/storage.md).
--
-- VOLATILE matters: a VOLATILE function's queries each take a fresh snapshot (PostgreSQL
-- manual, "Function Volatility Categories"), so under READ COMMITTED the head is read
-- after the lock is granted and sees the entries of the transaction that held it before.
-- A plain subquery would read the calling statement's snapshot, taken before the lock:
-- two replicas would chain on from one head.
CREATE FUNCTION audit_chain_head(lock_key BIGINT, OUT seq BIGINT, OUT hash TEXT,
                                 OUT jws TEXT)
VOLATILE LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT e.seq, e.hash INTO seq, hash FROM audit_entries e ORDER BY e.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        SELECT c.jws INTO jws FROM audit_checkpoints c ORDER BY c.seq DESC LIMIT 1;
    END IF;
END;
$$;

-- ``process_lock(lock_key, process_id)`` takes a process's session advisory lock (a step's,
-- held until the step ends) and returns the row of the negotiation or transfer with that id,
-- if any ('n' or 't', body): what the step reads first. VOLATILE for the same reason.
CREATE FUNCTION process_lock(lock_key BIGINT, process_id TEXT)
RETURNS TABLE (kind TEXT, body BYTEA)
VOLATILE LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_lock(lock_key);
    RETURN QUERY
        SELECT 'n'::text, n.body FROM negotiations n WHERE n.id = process_id
        UNION ALL
        SELECT 't'::text, t.body FROM transfers t WHERE t.id = process_id;
END;
$$;
