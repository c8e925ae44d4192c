-- 006 (PostgreSQL): a peer's consumerPid names one process per role; see
-- ../006_one_process_per_peer_pid.sql. Earlier duplicates are kept, marked with the first
-- row written (``row_seq``), which keeps the key.
ALTER TABLE negotiations ADD COLUMN duplicate_of TEXT;
UPDATE negotiations AS n SET duplicate_of = firsts.first_id
FROM (SELECT id, first_value(id) OVER (PARTITION BY counterparty, consumer_pid, role
                                       ORDER BY row_seq) AS first_id
      FROM negotiations WHERE counterparty IS NOT NULL) AS firsts
WHERE n.id = firsts.id AND firsts.first_id <> n.id;
CREATE UNIQUE INDEX negotiations_by_peer_pid
    ON negotiations (counterparty, consumer_pid, role) WHERE duplicate_of IS NULL;

ALTER TABLE transfers ADD COLUMN duplicate_of TEXT;
UPDATE transfers AS t SET duplicate_of = firsts.first_id
FROM (SELECT id, first_value(id) OVER (PARTITION BY counterparty, consumer_pid, role
                                       ORDER BY row_seq) AS first_id
      FROM transfers WHERE counterparty IS NOT NULL) AS firsts
WHERE t.id = firsts.id AND firsts.first_id <> t.id;
CREATE UNIQUE INDEX transfers_by_peer_pid
    ON transfers (counterparty, consumer_pid, role) WHERE duplicate_of IS NULL;
