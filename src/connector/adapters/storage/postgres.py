"""The PostgreSQL store (asyncpg): the connector's state shared by several replicas.

The same ``Store`` as ``sqlite.SqliteStore``, with what sharing a database changes:

- **no record cache**: another replica may have written any row since; a read is a query;
- **one transaction per step**, on a pooled connection: the process row, its agreement, its
  outbox messages (sequence numbers from the database) and its audit entries commit together;
- **process locks** (``hold``): a session advisory lock on a pooled connection that the
  step's reads and writes then go through, so two replicas never step one process at once;
  the statement that takes it also reads the process's row (``process_lock``, migration
  011), the step's first read; the statement that saves the process ends it as it commits
  (``process_handover``, migration 013), so a step costs no unlock round trip;
- **one round trip per statement a step cannot do without**: the process row's upsert
  carries its announcement, first outbox row, agreement and the audit chain's lock and head
  (``_announced``); the audit entries go with the COMMIT (``_committed``);
- **the audit chain** is extended under a transaction-level advisory lock
  (``pg_advisory_xact_lock``), its head read inside it, so replicas append to one chain;
  lock and head are one function (``audit_chain_head``, migration 011) called in the
  statement that saves the process row, so they cost no round trip;
- **use counters** are one ``INSERT .. ON CONFLICT .. RETURNING``: exact across replicas;
- **seen token ids** are claimed in the request (``claim_jti``: the request goes on once its
  row is committed, so a replay is refused whichever replica saw the token first); the
  claims that arrive while one is being written go together in the next statement
  (``SeenTokenRows``), and so do the rows written behind (``record_jti``, flushed within
  JTI_FLUSH_S; ``close`` writes what is queued). The primary key keeps one row per jti;
- **outbox claims**: a replica inserts its outbox rows claimed by itself for CLAIM_S, renews
  its claims every CLAIM_S / 3 while it runs, and takes over the rows whose claim ran out
  (``claim_orphans``: ``FOR UPDATE SKIP LOCKED``, the database's clock), so the messages of a
  replica that died are sent by another within CLAIM_S plus one sweep;
- **changes are announced** (``pg_notify`` in the step's transaction, so on commit): a
  replica LISTENs while a long poll (``?wait=``) waits in it (``listening``, and
  LISTEN_LINGER_S after the last) and hands the record's kind and id to ``on_change``,
  which wakes the polls waiting on that record; a replica nobody waits on is not woken by
  every step of the others;
- **migrations** run under a session advisory lock, so replicas starting together apply
  each one once; the applied version is kept in ``connector_schema``.

The DSN is read from a 0600 file (``[storage] postgres_dsn_file``); messages name that file,
never the DSN, which may carry a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, NamedTuple

import asyncpg
import msgspec

from connector.adapters.storage.pages import PagedReads
from connector.adapters.storage.schema import latest, migrations
from connector.config import DEFAULT_POSTGRES_POOL_SIZE
from connector.core.audit import GENESIS, chain_events, entry_prefix, parse_checkpoint
from connector.core.errors import AuditError, ConfigError, ConflictError
from connector.core.negotiation import Negotiation
from connector.core.transfer import PUSH_FORMAT, Transfer
from connector.service.audit import AuditBatch, StepAudit
from connector.service.store import Agreement, ListQuery, OutboxItem, Outgoing

log = logging.getLogger("connector.store")
_enc = msgspec.json.Encoder()
_INSERT_ENTRIES = "INSERT INTO audit_entries (seq, digest, hash, body, ref1, ref2, evidence) "
# The audit chain's lock and head in one call (migration 011); (seq, hash, jws).
_CHAIN_HEAD = "SELECT seq, hash, jws FROM audit_chain_head($1)"
# A step's audit entries alone, numbered and chained in the server (migration 012).
_APPEND = "SELECT audit_append($1, $2, $3, $4, $5, $6, $7, $8)"
# What ``audit_append`` (migration 012) raises when the head is in the kept checkpoint.
CHAIN_IN_CHECKPOINT = "CNA01"
# A process lock, and the process's row read once it is granted (migration 011).
_PROCESS_LOCK = "SELECT kind, body FROM process_lock($1, $2)"
Statement = tuple[str, Sequence[Any]]
# Keys of the advisory locks (any fixed 64-bit numbers, the same in every replica).
MIGRATION_LOCK = 0x636F6E6E_00000001
AUDIT_LOCK = 0x636F6E6E_00000002
# A readiness probe waits this long for a connection, and as long for its answer (the SQLite
# probe's STORE_TIMEOUT_S).
PROBE_TIMEOUT_S = 2.0
# A replica's claim on its outbox rows lasts this long unless renewed: how long the messages
# of a dead replica wait before another sends them (EDC leases an entity for 60 s; we aim at
# seconds). Renewed every third of it.
CLAIM_S = 3.0
# Rows taken over in one sweep at most.
ORPHANS_PER_SWEEP = 500
_NOW = "extract(epoch from clock_timestamp())"
# The LISTEN/NOTIFY channel of record changes; a payload is "n:<id>" or "t:<id>".
CHANGES = "connector_changes"
# How long a replica keeps LISTENing after its last long poll ended (a burst of polls does
# not LISTEN and UNLISTEN for each).
LISTEN_LINGER_S = 10.0
SCHEMA_TABLE = "CREATE TABLE IF NOT EXISTS connector_schema (version INTEGER NOT NULL)"

_UPSERT_NEGOTIATION = (
    "INSERT INTO negotiations (id, role, state, consumer_pid, provider_pid, counterparty,"
    " dataset_id, updated_at, body) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)")
_ON_NEGOTIATION = (
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, provider_pid ="
    " excluded.provider_pid, counterparty = excluded.counterparty, updated_at ="
    " excluded.updated_at, body = excluded.body")
_UPSERT_TRANSFER = (
    "INSERT INTO transfers (id, role, state, consumer_pid, provider_pid, counterparty,"
    " agreement_id, token_hash, prev_token_hash, updated_at, body)"
    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)")
_ON_TRANSFER = (
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, provider_pid ="
    " excluded.provider_pid, counterparty = excluded.counterparty, token_hash ="
    " excluded.token_hash, prev_token_hash = excluded.prev_token_hash, updated_at ="
    " excluded.updated_at, body = excluded.body")
_INSERT_AGREEMENT = (
    "INSERT INTO agreements (id, negotiation_id, role, dataset_id, assigner, assignee,"
    " created_at, body) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)")
# Seen token ids, many rows in one statement: recorded (kept until the later expiry), and
# claimed (taken unless a live row holds the jti; the rows returned are the ones taken).
_RECORD_JTIS = ("INSERT INTO seen_tokens (jti, until) SELECT * FROM unnest($1::text[],"
                " $2::bigint[]) ON CONFLICT (jti) DO UPDATE SET until ="
                " greatest(seen_tokens.until, excluded.until)")
_CLAIM_JTIS = ("INSERT INTO seen_tokens (jti, until) SELECT * FROM unnest($1::text[],"
               " $2::bigint[]) ON CONFLICT (jti) DO UPDATE SET until = excluded.until"
               " WHERE seen_tokens.until < $3 RETURNING jti")
# A seen token id written behind waits this long at most for others to share its statement
# (sqlite.JTI_FLUSH_S).
JTI_FLUSH_S = 0.01
_INSERT_OUTBOX = ("INSERT INTO outbox (process_id, url, audience, body, next_attempt,"
                  f" claimed_by, claim_until) VALUES ($1, $2, $3, $4, 0, $5, {_NOW} + $6)"
                  " RETURNING seq")
_CLAIM_ORPHANS = (
    f"UPDATE outbox SET claimed_by = $1, claim_until = {_NOW} + $2 WHERE seq IN ("
    f" SELECT seq FROM outbox WHERE claim_until IS NULL OR claim_until < {_NOW}"
    " ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED)"
    " RETURNING seq, process_id, url, audience, body, attempts")


async def schema_version(conn: Any) -> int:
    """The migration number a database is at (0: none applied yet)."""
    await conn.execute(SCHEMA_TABLE)
    value = await conn.fetchval("SELECT max(version) FROM connector_schema")
    return int(value) if value is not None else 0


async def upgrade(conn: Any) -> tuple[int, int]:
    """Apply the missing migrations, each in its own transaction; (before, after).

    ConfigError when the database is newer than this code (a replica left behind)."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        before = current = await schema_version(conn)
        if current > latest("postgres"):
            raise ConfigError(f"the database schema is at version {current}, newer than this "
                              f"connector's {latest('postgres')}: upgrade the connector")
        for number, sql in migrations("postgres"):
            if number > current:
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO connector_schema (version) VALUES ($1)",
                                       number)
                current = number
        return before, current
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


class PostgresStore(PagedReads):
    """``Store`` on a PostgreSQL database, shared by every replica of one participant."""

    def __init__(self, pool: Any, audit: StepAudit | None = None) -> None:
        self._pool = pool
        self._audit = audit  # None: no audit trail (``[audit] enabled = false``)
        self.on_audit: Callable[[int], None] = lambda _count: None  # entries committed
        self._neg_dec = msgspec.json.Decoder(Negotiation)
        self._tr_dec = msgspec.json.Decoder(Transfer)
        self._ag_dec = msgspec.json.Decoder(Agreement)
        self._behind: set[asyncio.Task[None]] = set()  # audit entries being written
        self._jtis = SeenTokenRows(pool)
        self.on_change: Callable[[str, str], None] = lambda _kind, _id: None  # any replica's
        self._changes: ChangeListener | None = None
        self._dsn = ""
        self._pushes: PushClaims | None = None
        # The connection a step holds its process lock on, and the task running the step:
        # that task's reads and writes go through it (see ``hold``).
        self._step: contextvars.ContextVar[Step | None] = contextvars.ContextVar(
            f"step-{id(self)}", default=None)
        self.replica = uuid.uuid4().hex  # who claims outbox rows (a new one at each start)
        self._renewer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, dsn: str, *, audit: StepAudit | None = None,
                   pool_size: int = DEFAULT_POSTGRES_POOL_SIZE) -> PostgresStore:
        """Connect, bring the schema up to date, and return the store."""
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size,
                                         reset=_keep_session)
        try:
            async with pool.acquire() as conn:
                await upgrade(conn)
        except BaseException:
            await pool.close()
            raise
        store = cls(pool, audit)
        store._dsn = dsn
        store._changes = ChangeListener(dsn, lambda kind, id: store.on_change(kind, id))
        store._renewer = asyncio.create_task(store._renew_loop())
        return store

    def listening(self) -> contextlib.AbstractAsyncContextManager[None]:
        """While a long poll waits: every replica's changes reach ``on_change``
        (``ChangeListener.listening``)."""
        assert self._changes is not None, "PostgresStore.open makes the store"
        return self._changes.listening()

    async def close(self) -> None:
        """Stop; the outbox rows still claimed are released for another replica at once."""
        if self._pushes is not None:
            await self._pushes.close()
        if self._changes is not None:
            await self._changes.close()
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                async with self._pool.acquire() as conn:
                    await conn.execute("UPDATE outbox SET claimed_by = NULL, claim_until = NULL"
                                       " WHERE claimed_by = $1", self.replica)
        if self._behind:
            await asyncio.gather(*self._behind, return_exceptions=True)
        await self._jtis.close()
        await self._pool.close()

    def push_claims(self) -> PushClaims:
        """Which replica runs each push (``adapters.http.push.Pusher``)."""
        if self._pushes is None:
            self._pushes = PushClaims(self._dsn)
        return self._pushes

    async def started_pushes(self) -> list[Transfer]:
        """The provider's push transfers that are STARTED (pushing, or left by a replica
        that died mid-push)."""
        rows = await self._rows("SELECT body FROM transfers WHERE role = 'provider' AND"
                                " state = 'STARTED' ORDER BY row_seq")
        return [t for t in (self._tr_dec.decode(r[0]) for r in rows) if t.format == PUSH_FORMAT]

    def process_locks(self) -> PostgresStore:
        """Per-process locks every replica sees (``service.locks.SharedLocks``)."""
        return self

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the lock named ``key`` in every replica until the context exits.

        A session advisory lock (``pg_advisory_lock``) on a pooled connection the step keeps
        until then: the step's reads and writes go through that connection (no second
        acquire, no lock round trips serialised on a shared connection). A replica that dies
        drops its connections, and with them its locks, at once (no lease to wait out). A
        lock taken inside another (a new process within an initial request's) rides on the
        outer one's connection.

        The statement that takes the lock also reads the row of the process named ``key``
        once the lock is granted (``process_lock``, migration 011): the step's first read of
        it (``get_negotiation``, ``get_transfer``) costs no round trip; and the statement that
        saves the process releases it as it commits (``process_handover``, migration 013), so
        releasing costs none either, unless the step ends without that save.
        """
        number = _lock_number(key)
        step = self._bound()
        if step is not None:
            await _lock(step, number, key)
            try:
                yield
            finally:
                await _unlock(step, number)
            return
        async with self._pool.acquire() as conn:
            step = Step(asyncio.current_task(), conn)
            await _lock(step, number, key)
            token = self._step.set(step)
            try:
                yield
            finally:
                self._step.reset(token)
                await _unlock(step, number)

    def _bound(self) -> Step | None:
        """The step this task runs, if it runs one."""
        step = self._step.get()
        if step is None or step.task is not asyncio.current_task():
            return None  # none, or a task the step started (it has its own connections)
        return step

    def _read_with_lock(self, kind: str, id: str) -> tuple[bool, bytes | None]:
        """(whether, body or None): the row of process ``id`` that this task's step read
        with its lock, if it has not read or written since (then served once)."""
        step = self._bound()
        if step is None or (kind, id) not in step.fresh:
            return False, None
        return True, step.fresh.pop((kind, id))

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        step = self._bound()
        if step is not None:
            yield step.conn
        else:
            async with self._pool.acquire() as conn:
                yield conn

    async def probe(self, schema: int) -> tuple[str | None, int]:
        """(problem or None, outbox depth): the readiness check of the shared database."""
        try:
            async with self._pool.acquire(timeout=PROBE_TIMEOUT_S) as conn:
                # Bounded too: a query stuck behind a lock would keep the last answer
                # (ready) for as long as it waits.
                version, depth = await conn.fetchrow(
                    "SELECT (SELECT max(version) FROM connector_schema),"
                    " (SELECT count(*) FROM outbox)", timeout=PROBE_TIMEOUT_S)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            return f"the database does not answer: {type(exc).__name__}: {exc}", 0
        if (version or 0) < schema:
            return f"schema at version {version}, this code needs {schema}", int(depth)
        return None, int(depth)

    # -- helpers ------------------------------------------------------------------------

    async def _rows(self, sql: str, *args: Any) -> list[Any]:
        async with self._connection() as conn:
            return list(await conn.fetch(sql, *args))

    async def _transaction(self, statements: list[Statement], outbox: Sequence[Outgoing],
                           audit: AuditBatch | None = None, *,
                           record: Announced | None = None) -> list[OutboxItem]:
        """Run one step's statements, outbox rows and audit entries in one transaction;
        ``record``, the process row's upsert, first, with its announcement, its first outbox
        row, the row written with it (an agreement) and the audit chain's lock and head in
        the same statement (``_announced``: round trips are what a step costs); the audit
        entries, chained on from that head, are sent with the COMMIT (``_committed``)."""
        step = self._bound()
        if step is not None:
            if record is not None and (number := _lock_number(record.id)) in step.handed:
                # A second save of the process in one step: the first released its lock.
                await _lock(step, number, record.id)
            step.fresh.clear()  # what the step read with its lock is no longer current
        if record is not None and not statements and len(outbox) <= 1:
            # Every entry pruned: the head is in the kept checkpoint, read below instead.
            with contextlib.suppress(_ChainInCheckpoint):
                return await self._one_statement(record, outbox, audit)
        with _step_errors(audit):
            async with self._connection() as conn, _committed(conn) as tail:
                items: list[OutboxItem] = []
                head: tuple[int, str] | None = None
                if record is not None:
                    first = outbox[0] if outbox else None
                    row = await conn.fetchrow(*_announced(record, first, self.replica,
                                                          chained=bool(audit)))
                    if first is not None:
                        items.append(_queued(first, row[0]))
                        outbox = outbox[1:]
                    head = _chain_head(row[2:5]) if audit else None
                for sql, args in statements:
                    await conn.execute(sql, *args)
                items += [await _enqueue(conn, out, self.replica) for out in outbox]
                count = 0
                if audit:
                    if head is None:  # a step without a process row: the lock and head alone
                        head = _chain_head(await conn.fetchrow(_CHAIN_HEAD, AUDIT_LOCK))
                    count = _append_entries(tail, audit, head)
        self._written(audit, count)
        return items

    async def _one_statement(self, record: Announced, outbox: Sequence[Outgoing],
                             audit: AuditBatch | None) -> list[OutboxItem]:
        """A step that is one statement (``_announced``): the process row, its outbox
        message, the row written with it and its audit entries (``audit_append``), committed
        as that statement ends: no BEGIN, no COMMIT, one round trip."""
        first = outbox[0] if outbox else None
        append = _append_args(audit) if audit else None
        step, handover = self._handover(record)
        with _step_errors(audit):
            async with self._connection() as conn:
                row = await conn.fetchrow(*_announced(record, first, self.replica,
                                                      chained=False, append=append,
                                                      handover=handover))
        if step is not None and handover is not None:
            step.handed_over(handover)
        self._written(audit, int(row[2]) if audit else 0)
        return [_queued(first, row[0])] if first is not None else []

    def _handover(self, record: Announced) -> tuple[Step | None, int | None]:
        """The step saving ``record``, and the lock it holds on that process, if it holds it:
        the statement that saves it releases it as it commits (``process_handover``)."""
        step = self._bound()
        number = _lock_number(record.id)
        return step, (number if step is not None and number in step.held else None)

    def _written(self, audit: AuditBatch | None, count: int) -> None:
        """A step's ``count`` audit entries are committed: tell the trail and the batch."""
        if audit and count:
            self.on_audit(count)
            for done in audit.on_commit:
                done()

    # -- negotiations and agreements -------------------------------------------------------

    async def get_negotiation(self, id: str) -> Negotiation | None:
        read, body = self._read_with_lock("n", id)
        if not read:
            rows = await self._rows("SELECT body FROM negotiations WHERE id = $1", id)
            body = rows[0][0] if rows else None
        return self._neg_dec.decode(body) if body is not None else None

    async def save_negotiation(
        self, record: Negotiation, *, outbox: Sequence[Outgoing] = (),
        agreement: Agreement | None = None, expect_new: bool = False,
    ) -> list[OutboxItem]:
        upsert = Announced(
            _UPSERT_NEGOTIATION + ("" if expect_new else _ON_NEGOTIATION),
            (record.id, record.role.value, record.state.value, record.consumer_pid,
             record.provider_pid, record.counterparty_id, record.dataset_id,
             record.updated_at, _enc.encode(record)), "n", record.id)
        if agreement is not None:
            upsert = upsert._replace(also=(_INSERT_AGREEMENT, (
                agreement.id, agreement.negotiation_id, agreement.role, agreement.dataset_id,
                agreement.assigner, agreement.assignee, agreement.created_at,
                _enc.encode(agreement))))
        audit = self._audit.negotiation(record, outbox, agreement) if self._audit else None
        return await self._transaction([], outbox, audit, record=upsert)

    async def find_negotiation(self, *, counterparty: str | None, role: str,
                               consumer_pid: str | None = None,
                               provider_pid: str | None = None) -> Negotiation | None:
        """The negotiation a peer's pid names in ``role``: its consumerPid (migration 006's
        unique key) or, given instead, its providerPid (migration 008's)."""
        column, pid = ("consumer_pid", consumer_pid) if consumer_pid else (
            "provider_pid", provider_pid)
        rows = await self._rows(
            "SELECT body FROM negotiations WHERE counterparty IS NOT DISTINCT FROM $1"
            f" AND {column} = $2 AND role = $3 AND duplicate_of IS NULL",
            counterparty, pid, role)
        return self._neg_dec.decode(rows[0][0]) if rows else None

    async def list_negotiations(self) -> list[Negotiation]:
        rows = await self._rows("SELECT body FROM negotiations ORDER BY updated_at, row_seq")
        return [self._neg_dec.decode(r[0]) for r in rows]

    async def get_agreement(self, id: str) -> Agreement | None:
        rows = await self._rows("SELECT body FROM agreements WHERE id = $1", id)
        return self._ag_dec.decode(rows[0][0]) if rows else None

    async def list_agreements(self) -> list[Agreement]:
        rows = await self._rows("SELECT body FROM agreements ORDER BY created_at, id")
        return [self._ag_dec.decode(r[0]) for r in rows]

    async def save_agreement(self, agreement: Agreement) -> None:
        """Rewrite an agreement's record (its revocation); the contract itself never changes."""
        audit = self._audit.revocation(agreement) if self._audit and agreement.revoked else None
        await self._transaction([("UPDATE agreements SET body = $1 WHERE id = $2",
                                  (_enc.encode(agreement), agreement.id))], (), audit)

    # -- transfers ------------------------------------------------------------------------

    async def get_transfer(self, id: str) -> Transfer | None:
        read, body = self._read_with_lock("t", id)
        if not read:
            rows = await self._rows("SELECT body FROM transfers WHERE id = $1", id)
            body = rows[0][0] if rows else None
        return self._tr_dec.decode(body) if body is not None else None

    async def find_transfer(self, *, consumer_pid: str, role: str,
                            counterparty: str | None = None) -> Transfer | None:
        """The transfer a consumerPid names in ``role``; with ``counterparty``, the one that
        peer's consumerPid names (migration 006's unique key)."""
        if counterparty is None:
            rows = await self._rows("SELECT body FROM transfers WHERE consumer_pid = $1 AND"
                                    " role = $2 ORDER BY row_seq LIMIT 1", consumer_pid, role)
        else:
            rows = await self._rows(
                "SELECT body FROM transfers WHERE counterparty = $1 AND consumer_pid = $2"
                " AND role = $3 AND duplicate_of IS NULL", counterparty, consumer_pid, role)
        return self._tr_dec.decode(rows[0][0]) if rows else None

    async def find_transfer_by_token(self, token_hash: str) -> Transfer | None:
        rows = await self._rows("SELECT body FROM transfers WHERE token_hash = $1"
                                " OR prev_token_hash = $1 LIMIT 1", token_hash)
        return self._tr_dec.decode(rows[0][0]) if rows else None

    async def save_transfer(
        self, record: Transfer, *, outbox: Sequence[Outgoing] = (), expect_new: bool = False,
    ) -> list[OutboxItem]:
        audit = self._audit.transfer(record, outbox) if self._audit else None
        return await self._transaction([], outbox, audit, record=Announced(
            _UPSERT_TRANSFER + ("" if expect_new else _ON_TRANSFER),
            (record.id, record.role.value, record.state.value, record.consumer_pid,
             record.provider_pid, record.counterparty_id, record.agreement_id,
             record.token_hash, record.prev_token_hash, record.updated_at, _enc.encode(record)),
            "t", record.id))

    async def list_transfers(self, agreement_id: str | None = None) -> list[Transfer]:
        if agreement_id is None:
            rows = await self._rows("SELECT body FROM transfers ORDER BY updated_at, row_seq")
        else:
            rows = await self._rows("SELECT body FROM transfers WHERE agreement_id = $1"
                                    " ORDER BY updated_at, row_seq", agreement_id)
        return [self._tr_dec.decode(r[0]) for r in rows]

    async def add_use(self, agreement_id: str, delta: int) -> int:
        """Add ``delta`` to an agreement's use count atomically (across replicas too); return
        the new count."""
        rows = await self._rows(
            "INSERT INTO agreement_uses (agreement_id, uses) VALUES ($1, $2)"
            " ON CONFLICT (agreement_id) DO UPDATE SET uses = agreement_uses.uses"
            " + excluded.uses RETURNING uses", agreement_id, delta)
        return int(rows[0][0])

    # -- audit trail (service.audit.AuditLog) -------------------------------------------------

    async def append_audit(self, batch: AuditBatch) -> None:
        """Events that are a step of their own (a catalogue answer, a data access, a reload)."""
        if self._audit is not None and batch:
            await self._audit_step(batch)

    async def _audit_step(self, batch: AuditBatch) -> None:
        """A step that is audit entries alone: one statement (``audit_append``), which holds
        the chain's lock only while the server runs it, never across a round trip to an
        event loop that may be busy (another replica's steps would wait on it)."""
        with contextlib.suppress(_ChainInCheckpoint):
            with _step_errors(batch):
                async with self._connection() as conn:
                    count = await conn.fetchval(_APPEND, AUDIT_LOCK, *_append_args(batch))
            self._written(batch, int(count))
            return
        await self._transaction([], (), batch)  # the head is in the kept checkpoint

    def append_audit_behind(self, batch: AuditBatch) -> None:
        """Events of a step that changes no state (a catalogue answer), written behind (a
        task, as seen token ids); never waits. Failures are logged."""
        if self._audit is not None and batch:
            task = asyncio.get_running_loop().create_task(self._append_behind(batch))
            self._behind.add(task)
            task.add_done_callback(self._behind.discard)

    async def _append_behind(self, batch: AuditBatch) -> None:
        try:
            await self._audit_step(batch)
        except AuditError as exc:
            log.error("cannot persist catalogue answers' audit entries: %s", exc)

    async def audit_head(self) -> tuple[int, str]:
        """(seq, hash) the chain goes on from (``_chain_head``), read under the chain's lock
        (so after the append in flight, if any, commits)."""
        async with self._connection() as conn:
            return _chain_head(await conn.fetchrow(_CHAIN_HEAD, AUDIT_LOCK))

    async def last_checkpoint(self) -> tuple[int, float]:
        rows = await self._rows("SELECT seq, at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
        return (int(rows[0][0]), float(rows[0][1])) if rows else (0, 0.0)

    async def add_checkpoint(self, seq: int, at: float, jws: str) -> None:
        await self._transaction([(
            "INSERT INTO audit_checkpoints (seq, at, jws) VALUES ($1, $2, $3)"
            " ON CONFLICT (seq) DO NOTHING", (seq, at, jws))], ())

    async def agreement_uses(self, agreement_id: str) -> int:
        rows = await self._rows("SELECT uses FROM agreement_uses WHERE agreement_id = $1",
                                agreement_id)
        return int(rows[0][0]) if rows else 0

    # -- pages for the console: filtered and counted in SQL, bodies decoded per page --------

    async def _page(self, table: str, subject: str, order: str, query: ListQuery
                    ) -> tuple[int, list[Any]]:
        filters = [(c, v) for c, v in (("state", query.state), ("role", query.role),
                                       (subject, query.subject)) if v]
        where = " AND ".join(f"{column} = ${i}" for i, (column, _) in enumerate(filters, 1))
        where = f" WHERE {where}" if where else ""
        args = [v for _, v in filters]
        total = (await self._rows(f"SELECT COUNT(*) FROM {table}{where}", *args))[0][0]
        n = len(args)
        rows = await self._rows(f"SELECT body FROM {table}{where} ORDER BY {order} DESC"
                                f" LIMIT ${n + 1} OFFSET ${n + 2}",
                                *args, query.limit, query.offset)
        return int(total), [r[0] for r in rows]

    async def state_counts(self, kind: str) -> dict[str, int]:
        table = {"negotiations": "negotiations", "transfers": "transfers"}[kind]
        rows = await self._rows(f"SELECT state, COUNT(*) FROM {table} GROUP BY state"
                                " ORDER BY state")
        return {str(state): int(count) for state, count in rows}

    # -- seen token ids ---------------------------------------------------------------------

    def record_jti(self, jti: str, until: int) -> None:
        """Write a seen jti behind (within JTI_FLUSH_S, with the others queued); never waits.
        Failures are logged."""
        self._jtis.record(jti, until)

    async def claim_jti(self, jti: str, until: int, now: int) -> bool:
        """Record ``jti`` unless a live row holds it (another replica accepted it first);
        returns once the row is committed, in one statement with the claims made meanwhile."""
        return await self._jtis.claim(jti, until, now)

    async def live_jtis(self, now: int) -> list[tuple[str, int]]:
        rows = await self._rows("SELECT jti, until FROM seen_tokens WHERE until >= $1"
                                " ORDER BY until", now)
        return [(str(r[0]), int(r[1])) for r in rows]

    async def purge_jtis(self, now: int) -> None:
        await self._transaction([("DELETE FROM seen_tokens WHERE until < $1", (now,))], ())

    # -- outbox ---------------------------------------------------------------------------

    async def pending_outbox(self) -> list[OutboxItem]:
        """The rows this replica is to send: its own, and those no live replica holds (a
        previous run's, a dead replica's), which become its own."""
        await self.claim_orphans()
        rows = await self._rows("SELECT seq, process_id, url, audience, body, attempts"
                                " FROM outbox WHERE claimed_by = $1 ORDER BY seq", self.replica)
        return [OutboxItem(seq=r[0], process_id=r[1], url=r[2], audience=r[3], body=bytes(r[4]),
                           attempts=r[5]) for r in rows]

    async def claim_orphans(self) -> list[OutboxItem]:
        """Take over the outbox rows whose claim ran out (their replica died), in order."""
        rows = await self._rows(_CLAIM_ORPHANS, self.replica, CLAIM_S, ORPHANS_PER_SWEEP)
        return [OutboxItem(seq=r[0], process_id=r[1], url=r[2], audience=r[3], body=bytes(r[4]),
                           attempts=r[5]) for r in sorted(rows, key=lambda r: int(r[0]))]

    async def _renew_loop(self) -> None:
        """Keep this replica's claims alive while it runs."""
        while True:
            await asyncio.sleep(CLAIM_S / 3)
            try:
                async with self._pool.acquire() as conn:
                    await conn.execute(f"UPDATE outbox SET claim_until = {_NOW} + $2"
                                       " WHERE claimed_by = $1", self.replica, CLAIM_S)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                log.warning("cannot renew the outbox claims: %s", exc)

    async def outbox_done(self, seqs: Sequence[int]) -> None:
        if seqs:
            async with self._pool.acquire() as conn:
                await conn.execute("DELETE FROM outbox WHERE seq = any($1::bigint[])",
                                   list(seqs))

    async def outbox_retry(self, seq: int, attempts: int, next_attempt: float, error: str) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE outbox SET attempts = $1, next_attempt = $2, last_error = $3"
                " WHERE seq = $4", attempts, next_attempt, error, seq)


class ChangeListener:
    """The records other replicas change, LISTENed to while long polls wait (``listening``)
    and LISTEN_LINGER_S after the last; each announcement goes to ``on_change(kind, id)``.
    The connection is its own, opened at the first poll, and again if it was lost."""

    def __init__(self, dsn: str, on_change: Callable[[str, str], None]) -> None:
        self._dsn = dsn
        self._on_change = on_change
        self.conn: Any = None  # the LISTENing connection, once opened
        self.listens = False  # whether it LISTENs now
        self._waiting = 0  # long polls waiting in this replica
        self._lock = asyncio.Lock()
        self._linger: asyncio.TimerHandle | None = None
        self._stopping: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[None]:
        """Entered before the poll reads the record, so a change committed after that read
        is announced to it."""
        self._waiting += 1
        try:
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            async with self._lock:
                await self._listen()
            yield
        finally:
            self._waiting -= 1
            if self._waiting == 0 and self._linger is None:
                self._linger = asyncio.get_running_loop().call_later(
                    LISTEN_LINGER_S, self._lingered)

    async def close(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
        if self._stopping is not None:
            await asyncio.gather(self._stopping, return_exceptions=True)
        if self.conn is not None:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await self.conn.close()

    async def _listen(self) -> None:
        if self.conn is None or self.conn.is_closed():
            self.conn, self.listens = await asyncpg.connect(self._dsn), False
        if not self.listens:
            await self.conn.add_listener(CHANGES, self._notified)
            self.listens = True

    def _lingered(self) -> None:
        self._linger = None
        self._stopping = asyncio.get_running_loop().create_task(self._unlisten())

    async def _unlisten(self) -> None:
        async with self._lock:
            if self._waiting or not self.listens:
                return
            self.listens = False
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await self.conn.remove_listener(CHANGES, self._notified)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        kind, _, id = payload.partition(":")
        if id:
            self._on_change(kind, id)


class SeenTokenRows:
    """Seen token ids written in batches: one task writes what is queued, in one statement
    per kind, then what was queued meanwhile. A claim is written at once if nothing is
    being written (no wait at low load) and with the claims that arrive meanwhile
    otherwise; a recorded row waits JTI_FLUSH_S at most."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._claims: list[tuple[str, int, int, asyncio.Future[bool]]] = []
        self._recorded: dict[str, int] = {}  # jti -> until, the later expiry kept
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def claim(self, jti: str, until: int, now: int) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._claims.append((jti, until, now, future))
        self._start()
        return await future

    def record(self, jti: str, until: int) -> None:
        self._recorded[jti] = max(until, self._recorded.get(jti, until))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(JTI_FLUSH_S, self._due)

    async def close(self) -> None:
        """Write what is queued."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._start()
        while self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    def _due(self) -> None:
        self._timer = None
        self._start()

    def _start(self) -> None:
        if self._writer is None and (self._claims or self._recorded):
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        try:
            while self._claims or self._recorded:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                recorded, self._recorded = self._recorded, {}
                claims, self._claims = self._claims, []
                await self._write_rows(recorded, claims)
        finally:
            self._writer = None

    async def _write_rows(self, recorded: dict[str, int],
                          claims: list[tuple[str, int, int, asyncio.Future[bool]]]) -> None:
        # One row per jti and statement (ON CONFLICT updates a row once): a jti claimed twice
        # here is taken by its first claim at most, the others are replays.
        first: dict[str, int] = {}
        for jti, until, _now, _future in claims:
            first.setdefault(jti, until)
        try:
            async with self._pool.acquire() as conn:
                if recorded:
                    await conn.execute(_RECORD_JTIS, list(recorded), list(recorded.values()))
                taken: set[str] = set()
                if first:
                    # The claims' clocks differ by the milliseconds they waited: the latest.
                    now = max(now for _jti, _until, now, _f in claims)
                    rows = await conn.fetch(_CLAIM_JTIS, list(first), list(first.values()), now)
                    taken = {str(r[0]) for r in rows}
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            if recorded:
                log.error("cannot persist seen token ids (replays stay refused until a"
                          " restart): %s", exc)
            for *_, future in claims:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the loop ends): no claimant waits forever
            for *_, future in claims:
                future.cancel()
            raise
        for jti, _until, _now, future in claims:
            if not future.done():
                future.set_result(jti in taken)
                taken.discard(jti)  # a second claim in this batch is a replay


class PushClaims:
    """Which replica runs each push: a session advisory lock per transfer, held while the
    push runs, on one connection of its own. A replica that dies drops the connection and
    its claims with it at once; another then claims the push and resumes it."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None
        self._use = asyncio.Lock()  # one command at a time on the connection

    async def _run(self, sql: str, pid: str) -> bool:
        async with self._use:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self._dsn)
            return bool(await self._conn.fetchval(sql, _lock_number(f"push\x00{pid}")))

    async def claim(self, pid: str) -> bool:
        """Whether this replica now runs the push (no live replica does)."""
        return await self._run("SELECT pg_try_advisory_lock($1)", pid)

    async def release(self, pid: str) -> None:
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await self._run("SELECT pg_advisory_unlock($1)", pid)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await self._conn.close()


async def _keep_session(_conn: Any) -> None:
    """A connection goes back to the pool as it is: the store sets no session state (its
    locks are released by ``hold``, or the connection is closed), so asyncpg's reset query
    (a round trip per acquire) has nothing to undo."""


def _lock_number(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


class Step:
    """A step under ``hold``: the task running it, the connection its locks are on, the
    rows of the held processes read when each lock was granted ((kind, id) -> body, None
    when there is no such row), until the step reads them or writes, and the locks it still
    holds (``_handover``)."""

    def __init__(self, task: asyncio.Task[Any] | None, conn: Any) -> None:
        self.task = task
        self.conn = conn
        self.fresh: dict[tuple[str, str], bytes | None] = {}
        self.held: set[int] = set()  # session locks this step holds
        self.handed: set[int] = set()  # ... and those its saves released (``_handover``)

    def handed_over(self, number: int) -> None:
        """The statement that saved the process released lock ``number`` as it committed."""
        self.held.discard(number)
        self.handed.add(number)


async def _lock(step: Step, number: int, id: str) -> None:
    """Wait for the lock, and read process ``id``'s row once it is granted; on any failure
    (a cancelled wait too, which may have been granted meanwhile) the connection is closed,
    and its locks go with it."""
    named = "\x00" not in id  # no process id has a NUL (a text value cannot hold one)
    try:
        if named:
            rows = await step.conn.fetch(_PROCESS_LOCK, number, id)
        else:
            await step.conn.execute("SELECT pg_advisory_lock($1)", number)
    except BaseException:
        step.conn.terminate()
        raise
    step.held.add(number)
    step.handed.discard(number)
    if not named:
        return
    step.fresh.update({("n", id): None, ("t", id): None})
    step.fresh.update({(str(kind), id): bytes(body) for kind, body in rows})


async def _unlock(step: Step, number: int) -> None:
    """Release the lock, unless the step's save handed it over (``_handover``); a connection
    that cannot is closed, which releases it too."""
    if number not in step.held:
        return
    step.held.discard(number)
    conn = step.conn
    try:
        await conn.execute("SELECT pg_advisory_unlock($1)", number)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        conn.terminate()  # the lock is gone with the session: nothing more to do
    except BaseException:
        conn.terminate()
        raise


class Announced(NamedTuple):
    """A process row's upsert, and the change it announces to every replica."""

    sql: str
    args: Sequence[Any]
    kind: str  # "n" or "t"
    id: str
    also: Statement | None = None  # a row written with it (a negotiation's agreement)


def _announced(record: Announced, out: Outgoing | None, replica: str, *,
               chained: bool, append: Sequence[Any] | None = None,
               handover: int | None = None) -> tuple[Any, ...]:
    """One statement (``fetchrow``'s arguments): ``record``'s upsert and its announcement to
    every replica (delivered on commit, and only then); given ``out``, its outbox row (claimed
    by ``replica``); ``record.also``, that row too; ``chained``, the audit chain's lock and
    head. Its row: the outbox row's
    ``seq`` (else NULL), the announcement, then the head's (seq, hash, jws) if ``chained``;
    given ``append`` instead (``_append_args``), the audit entries are written by the
    statement itself (``audit_append``, migration 012) and its third column is their count;
    given ``handover``, the step's lock of that number ends with the statement
    (``process_handover``, migration 013): its last column, computed after the others.

    The head comes from ``audit_chain_head`` (migration 011), called for the row the upsert
    returns: the process row is written (its unique keys checked) before the chain's lock is
    requested, as when the lock was a statement of its own after it. A step that waits for
    a peer's unique key never holds the chain's lock meanwhile (no deadlock between two
    steps racing for one key)."""
    args: list[Any] = list(record.args)

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    returning = (f"{param(AUDIT_LOCK)}::bigint AS audit_lock" if chained or append is not None
                 else "1")
    ctes = [f"saved AS ({record.sql} RETURNING {returning})"]
    columns = ["NULL::bigint",
               f"pg_notify({param(CHANGES)}, {param(f'{record.kind}:{record.id}')})"]
    if out is not None:
        ctes.append(
            "queued AS (INSERT INTO outbox (process_id, url, audience, body, next_attempt,"
            f" claimed_by, claim_until) SELECT {param(out.process_id)}::text,"
            f" {param(out.url)}::text, {param(out.audience)}::text, {param(out.body)}::bytea,"
            f" 0, {param(replica)}::text, {_NOW} + {param(CLAIM_S)} FROM saved RETURNING seq)")
        columns[0] = "(SELECT seq FROM queued)"
    if record.also is not None:  # read by nothing: run to completion after the rest
        sql, values = record.also
        ctes.append(f"also AS ({_shifted(sql, len(args))})")
        args += values
    source = "saved"
    if chained:
        columns.append("head.seq, head.hash, head.jws")
        source += " CROSS JOIN LATERAL audit_chain_head(saved.audit_lock) AS head"
    elif append is not None:
        columns.append("written.n")
        source += (" CROSS JOIN LATERAL audit_append(saved.audit_lock, "
                   f"{', '.join(param(a) for a in append)}) AS written(n)")
    if handover is not None:
        # Last: the select list is computed in order once the FROM row exists, so an upsert
        # or append that fails leaves the lock held (the step's exit releases it).
        columns.append(f"process_handover({param(handover)})")
    return (f"WITH {', '.join(ctes)} SELECT {', '.join(columns)} FROM {source}", *args)


def _shifted(sql: str, offset: int) -> str:
    """``sql`` with its parameters $1.. renumbered from ``offset`` + 1 on."""
    return re.sub(r"\$(\d+)", lambda m: f"${int(m[1]) + offset}", sql)


def _queued(out: Outgoing, seq: int) -> OutboxItem:
    return OutboxItem(seq=int(seq), process_id=out.process_id, url=out.url,
                      audience=out.audience, body=out.body)


async def _enqueue(conn: Any, out: Outgoing, replica: str) -> OutboxItem:
    seq = await conn.fetchval(_INSERT_OUTBOX, out.process_id, out.url, out.audience, out.body,
                              replica, CLAIM_S)
    return _queued(out, seq)


def _chain_head(row: Sequence[Any]) -> tuple[int, str]:
    """(seq, hash) the chain goes on from, given ``audit_chain_head``'s (seq, hash, jws): its
    last entry; once ``connector audit prune`` removed every entry, the checkpoint it kept
    (signed over that head); else GENESIS."""
    seq, hash, jws = row
    if seq is not None:
        return int(seq), str(hash)
    if jws is None:
        return 0, GENESIS
    kept = parse_checkpoint(str(jws))
    return kept.seq, kept.head


def _append_args(batch: AuditBatch) -> tuple[Any, ...]:
    """``audit_append``'s arguments after the lock (migration 012): each entry's body up to
    its number (``core.audit.entry_prefix``) and the ids it concerns, the step's own
    evidence (with its first entry) and the shared evidence, as ``_append_entries`` writes
    them."""
    refs, own, shared = batch.stored()
    return ([entry_prefix(event) for event in batch.events], [r[0] for r in refs],
            [r[1] for r in refs], own, [e[0] for e in shared], [e[1] for e in shared],
            [e[2] for e in shared])


def _append_entries(tail: list[str], batch: AuditBatch, head: tuple[int, str]) -> int:
    """Chain ``batch``'s events on from ``head``, read under the chain's lock in this
    transaction (``audit_chain_head``): their inserts join ``tail``; how many."""
    seq, prev = head
    entries = chain_events(seq + 1, prev, batch.events)
    refs, own, shared = batch.stored()
    tail.append(_INSERT_ENTRIES + _values([
        (entry.seq, entry.digest, entry.hash, entry.body, ref1, ref2, own if i == 0 else None)
        for i, (entry, (ref1, ref2)) in enumerate(zip(entries, refs, strict=True))]))
    if shared:
        tail.append("INSERT INTO audit_shared (digest, kind, content)"
                    f" {_values(shared)} ON CONFLICT DO NOTHING")
    return len(entries)


@contextlib.asynccontextmanager
async def _committed(conn: Any) -> AsyncIterator[list[str]]:
    """A transaction on ``conn``, begun and ended by hand so that the statements the body
    adds to the list it is given (their values written by ``_literal``) go with the COMMIT,
    in its round trip (a multi-statement simple query). On an error, ROLLBACK; a connection
    in an unknown state (a cancelled query, a lost socket) is closed instead."""
    try:
        await conn.execute("BEGIN")
    except BaseException:
        conn.terminate()
        raise
    tail: list[str] = []
    try:
        yield tail
        await conn.execute("".join(f"{sql};" for sql in tail) + "COMMIT")
    except asyncpg.PostgresError:
        try:
            await conn.execute("ROLLBACK")
        except BaseException:
            conn.terminate()
            raise
        raise
    except BaseException:
        conn.terminate()
        raise


def _values(rows: Sequence[Sequence[Any]]) -> str:
    return "VALUES " + ", ".join(f"({', '.join(map(_literal, row))})" for row in rows)


def _literal(value: Any) -> str:
    """``value`` as SQL text of digits and hex only, whatever a peer put in it: nothing in
    it can end the literal, with no quoting rules to get right."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        return f"convert_from(decode('{value.encode().hex()}', 'hex'), 'UTF8')"
    if isinstance(value, bytes):
        return f"decode('{value.hex()}', 'hex')"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


class _ChainInCheckpoint(Exception):
    """``audit_append`` found the head in the kept checkpoint (CHAIN_IN_CHECKPOINT): the
    step goes through a transaction instead; nothing was written."""


@contextlib.contextmanager
def _step_errors(audit: AuditBatch | None) -> Iterator[None]:
    """A step's database errors as the store's callers know them: a unique key refusing the
    write is a ConflictError; any other failure of an audited step refuses it (AuditError)."""
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise ConflictError(f"conflicting write: {exc}") from exc
    except (asyncpg.PostgresError, OSError) as exc:
        if getattr(exc, "sqlstate", None) == CHAIN_IN_CHECKPOINT:
            raise _ChainInCheckpoint from exc
        if audit:
            raise _refusal(exc) from exc
        raise


def _refusal(exc: BaseException) -> AuditError:
    """The step is refused because its audit entry could not be written with it."""
    return AuditError(f"refused: the step and its audit entry could not be written ({exc}); "
                      "nothing was changed")
