-- 006: a peer's consumerPid names one process per role. DSP 2025-1 §CN 3.2 / §TP 3.2: the
-- same initial request sent again gets the same process, so a second row for the same
-- (counterparty, consumer_pid, role) is refused by the database, whichever replica races.
-- Rows a re-delivered request could open before this migration are kept (they are history)
-- but marked with the process that owns the key, which stays the first one written.
ALTER TABLE negotiations ADD COLUMN duplicate_of TEXT;
UPDATE negotiations SET duplicate_of = (
    SELECT first.id FROM negotiations AS first
    WHERE first.counterparty = negotiations.counterparty
      AND first.consumer_pid = negotiations.consumer_pid
      AND first.role = negotiations.role
    ORDER BY first.rowid LIMIT 1)
WHERE EXISTS (
    SELECT 1 FROM negotiations AS earlier
    WHERE earlier.counterparty = negotiations.counterparty
      AND earlier.consumer_pid = negotiations.consumer_pid
      AND earlier.role = negotiations.role
      AND earlier.rowid < negotiations.rowid);
CREATE UNIQUE INDEX negotiations_by_peer_pid
    ON negotiations (counterparty, consumer_pid, role) WHERE duplicate_of IS NULL;

ALTER TABLE transfers ADD COLUMN duplicate_of TEXT;
UPDATE transfers SET duplicate_of = (
    SELECT first.id FROM transfers AS first
    WHERE first.counterparty = transfers.counterparty
      AND first.consumer_pid = transfers.consumer_pid
      AND first.role = transfers.role
    ORDER BY first.rowid LIMIT 1)
WHERE EXISTS (
    SELECT 1 FROM transfers AS earlier
    WHERE earlier.counterparty = transfers.counterparty
      AND earlier.consumer_pid = transfers.consumer_pid
      AND earlier.role = transfers.role
      AND earlier.rowid < transfers.rowid);
CREATE UNIQUE INDEX transfers_by_peer_pid
    ON transfers (counterparty, consumer_pid, role) WHERE duplicate_of IS NULL;
