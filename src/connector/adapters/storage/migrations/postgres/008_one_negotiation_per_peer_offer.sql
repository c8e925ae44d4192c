-- 008 (PostgreSQL): a provider's providerPid names one negotiation a consumer holds with it;
-- see ../008_one_negotiation_per_peer_offer.sql. Earlier duplicates are kept, marked with the
-- first row written (``row_seq``), as in 006.
UPDATE negotiations AS n SET duplicate_of = firsts.first_id
FROM (SELECT id, first_value(id) OVER (PARTITION BY counterparty, provider_pid, role
                                       ORDER BY row_seq) AS first_id
      FROM negotiations
      WHERE role = 'consumer' AND provider_pid IS NOT NULL AND duplicate_of IS NULL) AS firsts
WHERE n.id = firsts.id AND firsts.first_id <> n.id;
CREATE UNIQUE INDEX negotiations_by_peer_provider_pid
    ON negotiations (counterparty, provider_pid, role)
    WHERE role = 'consumer' AND provider_pid IS NOT NULL AND duplicate_of IS NULL;
