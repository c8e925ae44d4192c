"""Crash consistency: two real daemons under load, killed with SIGKILL and restarted.

A provider and a consumer (``connector run`` processes, HTTPS on loopback, SQLite files in
their folders) are driven through the consumer's management API the way ``connector
negotiate`` and ``connector transfer`` drive it, by several jobs at once. Meanwhile a killer,
following a schedule drawn from the seed, SIGKILLs one daemon or both at random moments (some
right after a restart, while the daemon re-sends its outbox) and restarts it in the same folder
on the same ports. After the work stops and the outboxes have drained, both databases are
compared.

**Acknowledged**, and what is expected of it:

- A *negotiation* is acknowledged when ``POST /api/negotiations`` answered 201 with its id
  (the consumer has persisted it REQUESTED with its ContractRequestMessage in its outbox).
  The consumer is a member, so the provider's policy grants it: it must end FINALIZED on both
  sides, the provider holding exactly one negotiation for its consumerPid, both naming the
  same providerPid and the same agreement id, and each side holding that agreement once.
- A *transfer* is acknowledged when ``POST /api/transfers`` answered 201 with its id. Once
  STARTED, the job pulls the records through ``/api/transfers/{id}/data``; a pull cut by a
  kill (of either daemon) is resumed as ``connector transfer`` resumes it: a partial last
  record is dropped and the pull asked again from ``?offset=`` the count of whole records.
  The copy must equal the provider's summary (records, bytes, SHA-256) and the source file
  byte for byte; the job then completes it, and it must end COMPLETED on both sides, the
  provider holding exactly one transfer for its consumerPid.
- A call that failed (the daemon died under it, or answered 5xx) acknowledged nothing; the
  job opens another process. Whatever the consumer nevertheless persisted must still agree
  with the provider: a negotiation ends in the same state on both sides, a transfer is in the
  same state on both sides, never duplicated.

**Crash points by construction.** A random kill rarely lands in the few milliseconds between
a message's delivery and the deletion of its outbox row (the outbox delivers at least once:
rows are deleted in batches after delivery). So the harness also puts the daemon's database in
the state such a kill leaves: it watches both outboxes, and after each SIGKILL it writes back,
under their own sequence numbers, a few rows that had been delivered (one of each kind of
message, chosen by the seed) before restarting the daemon, which then delivers them again.

Both databases then pass ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``, after
every kill and at the end. Every random choice comes from ``random.Random`` seeded with the
run's seed (printed at the start and in every failure), so ``CRASH_SEED=N`` replays the same
kill schedule and the same jobs (the interleaving with the daemons' own timing may differ).

Modules: ``space`` (the two daemons, their databases, kills and restarts), ``jobs`` (what a
consumer does, as the CLI does it), ``checks`` (what must hold afterwards), ``run`` (one run:
plan, killer, workload, report). ``python -m tests.crash --seconds 300`` is the long form
(``make soak-crash``); ``tests/e2e/test_crash_consistency.py`` the short one.
"""

