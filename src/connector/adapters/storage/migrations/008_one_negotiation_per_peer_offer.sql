-- 008: a provider's providerPid names one negotiation a consumer holds with it. The same
-- initial ContractOfferMessage sent again (DSP 2025-1 §CN HTTPS binding, POST
-- /negotiations/offers) gets the same negotiation, as a repeated initial request does (006).
-- Earlier duplicates are kept and marked, as in 006.
UPDATE negotiations SET duplicate_of = (
    SELECT first.id FROM negotiations AS first
    WHERE first.counterparty = negotiations.counterparty
      AND first.provider_pid = negotiations.provider_pid
      AND first.role = negotiations.role
    ORDER BY first.rowid LIMIT 1)
WHERE role = 'consumer' AND provider_pid IS NOT NULL AND duplicate_of IS NULL
  AND EXISTS (
    SELECT 1 FROM negotiations AS earlier
    WHERE earlier.counterparty = negotiations.counterparty
      AND earlier.provider_pid = negotiations.provider_pid
      AND earlier.role = negotiations.role
      AND earlier.rowid < negotiations.rowid);
CREATE UNIQUE INDEX negotiations_by_peer_provider_pid
    ON negotiations (counterparty, provider_pid, role)
    WHERE role = 'consumer' AND provider_pid IS NOT NULL AND duplicate_of IS NULL;
