-- 013 (PostgreSQL): ``process_handover``, the end of a step's process lock inside the
-- statement that saves the step, so that the lock costs no round trip to release
-- (docs/storage.md).
--
-- A step holds its process's session advisory lock (``process_lock``, migration 011) from its
-- first read to its last write. Released by a statement of its own after the write commits,
-- that is a third round trip per step. Released inside the writing statement, the next
-- holder could read the row before that statement commits. So the function first takes the
-- same key's transaction-level lock (granted at once: this session holds the key; PostgreSQL
-- manual, "Advisory Locks"), then releases the session-level one: the key stays held until
-- the statement's transaction ends, and another session's ``process_lock`` is granted only
-- then; its read, in a fresh snapshot, sees what the step wrote. Returns whether the
-- session held the key.
CREATE FUNCTION process_handover(lock_key BIGINT)
RETURNS BOOLEAN
VOLATILE LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    RETURN pg_advisory_unlock(lock_key);
END;
$$;
