"""The embedded SQLite store (aiosqlite, WAL, numbered migrations).

One connection, one writer. Every aiosqlite call is a hop to its thread, which costs
60-300 µs of CPU on a 2-core VM (bench/README.md), so:

- **group commit**: transactions submitted while the writer is busy are committed together
  in one SQLite transaction, each table's rows in one multi-row INSERT, run with the COMMIT
  by one call on the thread (``_atomic``: one hop per transaction); if the batch fails (a
  reused pid), its transactions are replayed one by one so only the offender fails;
- **checkpoints apart**: the write-ahead log is copied back into the database by a second
  connection every CHECKPOINT_S, not inside the COMMIT that happens to cross SQLite's
  threshold;
- **record cache**: this process is the only writer, so live process records it wrote or
  read are kept (bounded, write-through after commit; finished ones are dropped) and reads by
  id cost no hop;
- outbox sequence numbers are allocated in memory from the table's maximum at start-up;
- **audit entries** (``service.audit``) join the transaction of the step they record; the
  writer makes them (``StepAudit.*_later``: a step's entry is taken down when the step is
  submitted, made with the others of its group commit), numbers and chains them
  (``core.audit``) when it commits, from the chain's head it keeps in memory, so a batch
  that fails leaves the chain as it was; an entry that cannot be made refuses its step;
- **seen token ids** (``record_jti``), and the audit entries of catalogue answers, which change
  no state (``append_audit_behind``), are written behind: the row joins the next group commit
  (or one JTI_FLUSH_S later if nothing else is written), so a replay check never waits for
  the disk. A crash loses at most the jtis of the group not yet committed (milliseconds of
  traffic); a token accepted in that window could be replayed once after the restart.

``synchronous=NORMAL`` in WAL mode keeps commits durable across a process crash (not across
power loss), which is SQLite's documented trade-off.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from connector.adapters.storage.pages import PagedReads
from connector.adapters.storage.schema import latest, migrations
from connector.core.audit import GENESIS, make_entry, parse_checkpoint
from connector.core.errors import AuditError, ConfigError, ConflictError
from connector.core.negotiation import Negotiation
from connector.core.transfer import Transfer
from connector.service.audit import AuditBatch, StepAudit
from connector.service.store import Agreement, ListQuery, OutboxItem, Outgoing

T = TypeVar("T")
log = logging.getLogger("connector.store")
_enc = msgspec.json.Encoder()
# Records kept in memory; past this the least recently written are dropped (read from disk).
CACHE_SIZE = 20_000
Statement = tuple[str, Sequence[Any]]
# The write-ahead log is copied back into the database this often, off the commit path; a
# log that grew past WAL_SIZE_LIMIT bytes is truncated to it once copied.
CHECKPOINT_S = 1.0
WAL_SIZE_LIMIT = 64 << 20
AUTO_CHECKPOINT = 1000  # pages: SQLite's default, when checkpoints cannot run apart
# Prepared statements the connection keeps (the sqlite3 module's default is 128). A group
# commit's multi-row INSERT is a different statement for each row count (``_multi_row``):
# with ~8 tables written, up to ~30 rows each, and the reads, the default cache is churned and
# statements are parsed again (sqlite3_prepare_v2 was ~10 % of the database thread's CPU).
CACHED_STATEMENTS = 1024
# A seen jti waits at most this long for another write to commit with (then commits alone).
JTI_FLUSH_S = 0.01
_RECORD_JTI = ("INSERT INTO seen_tokens (jti, until) VALUES (?, ?)"
               " ON CONFLICT (jti) DO UPDATE SET until = max(until, excluded.until)")
_INSERT_ENTRY = ("INSERT INTO audit_entries (seq, digest, hash, body, ref1, ref2, evidence)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?)")
_INSERT_SHARED = "INSERT OR IGNORE INTO audit_shared (digest, kind, content) VALUES (?, ?, ?)"
_UPSERT_NEGOTIATION = (
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, provider_pid ="
    " excluded.provider_pid, counterparty = excluded.counterparty, updated_at ="
    " excluded.updated_at, body = excluded.body")
_UPSERT_TRANSFER = (
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, provider_pid ="
    " excluded.provider_pid, counterparty = excluded.counterparty, token_hash ="
    " excluded.token_hash, prev_token_hash = excluded.prev_token_hash, updated_at ="
    " excluded.updated_at, body = excluded.body")


class _Txn:
    """One submitted transaction waiting for the group-commit writer. Its audit entries are
    ``audit``, or made by ``later`` when the writer chains the batch (``StepAudit``'s
    ``*_later`` methods)."""

    __slots__ = ("audit", "cached", "future", "later", "statements")

    def __init__(self, statements: list[Statement], cached: list[tuple[str, Any]],
                 future: asyncio.Future[None], audit: AuditBatch | None = None,
                 later: Callable[[], AuditBatch] | None = None) -> None:
        self.statements = statements
        self.cached = cached
        self.future = future
        self.audit = audit
        self.later = later


class SqliteStore(PagedReads):
    """``Store`` on one SQLite file."""

    def __init__(self, conn: aiosqlite.Connection, audit: StepAudit | None = None) -> None:
        self._conn = conn
        self._audit = audit  # None: no audit trail (``[audit] enabled = false``)
        self._audit_head: tuple[int, str] = (0, GENESIS)
        self.on_audit: Callable[[int], None] = lambda _count: None  # entries committed
        self._neg_dec = msgspec.json.Decoder(Negotiation)
        self._tr_dec = msgspec.json.Decoder(Transfer)
        self._ag_dec = msgspec.json.Decoder(Agreement)
        self._cache: dict[str, Any] = {}
        self._pending: list[_Txn] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._next_seq = 1
        self._jtis: _Txn | None = None  # the queued, not yet committed seen-jti rows
        self._committing = False
        self._checkpointer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path, *, audit: StepAudit | None = None) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level="IMMEDIATE",
                                       cached_statements=CACHED_STATEMENTS)
        store = cls(conn, audit)
        try:  # a store that refuses to open (a newer schema) closes what it opened
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            await conn.execute("PRAGMA foreign_keys=ON")
            await store._migrate()
            store._audit_head = await _chain_head(conn)
            rows = await conn.execute_fetchall("SELECT coalesce(max(seq), 0) FROM outbox")
            store._next_seq = int(next(iter(rows))[0]) + 1
        except BaseException:
            await conn.close()
            raise
        store._writer = asyncio.create_task(store._write_loop())
        store._checkpointer = asyncio.create_task(store._checkpoint_loop(path))
        return store

    async def _checkpoint_loop(self, path: Path) -> None:
        """Copy the WAL back into the database file every CHECKPOINT_S, on a connection (and
        thread) of its own: SQLite's automatic checkpoint runs inside a COMMIT, with its
        fsyncs, and would hold every step of the next group commit meanwhile. PASSIVE never
        waits for the writer (https://sqlite.org/c3ref/wal_checkpoint_v2.html); what it
        could not copy, the next one does. If this loop cannot run, the automatic checkpoint
        is put back."""
        try:
            async with aiosqlite.connect(path, isolation_level=None) as conn:
                await self._conn.execute("PRAGMA wal_autocheckpoint=0")
                try:
                    while True:
                        await asyncio.sleep(CHECKPOINT_S)
                        await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                finally:
                    await self._conn.execute(f"PRAGMA wal_autocheckpoint={AUTO_CHECKPOINT}")
        except sqlite3.Error as exc:
            log.warning("checkpoints are back in the commits: cannot run them apart (%s)", exc)

    async def _migrate(self) -> None:
        async with self._conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > latest("sqlite"):
            raise ConfigError(f"the database schema is at version {current}, newer than this "
                              f"connector's {latest('sqlite')}: upgrade the connector")
        for number, sql in migrations():
            if number > current:
                await self._conn.executescript(
                    f"BEGIN;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")

    async def close(self) -> None:
        if self._writer is not None:
            self._wake.set()  # queued jtis do not wait for their flush timer
            while self._pending or self._committing:  # write-behind rows are not awaited
                await asyncio.sleep(0.001)
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        await self._conn.close()  # the last connection: checkpoints the WAL and removes it

    # -- helpers ------------------------------------------------------------------------

    async def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """One read: a call of its own on the connection's thread, which runs calls one at a
        time, so it never lands inside a write's transaction (``_atomic``)."""
        return list(await self._conn.execute_fetchall(sql, args))

    async def _body(self, sql: str, key: str, decoder: msgspec.json.Decoder[T],
                    id: str) -> T | None:
        """A record by id: from the cache, else one hop to the database."""
        if key in self._cache:
            cached: T = self._cache[key]
            return cached
        rows = await self._rows(sql, (id,))
        if not rows:
            return None
        record = decoder.decode(rows[0][0])
        self._remember(key, record)
        return record

    def _remember(self, key: str, record: Any) -> None:
        self._cache.pop(key, None)
        self._cache[key] = record
        if len(self._cache) > CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))

    async def _transaction(self, statements: list[Statement], outbox: Sequence[Outgoing],
                           cached: list[tuple[str, Any]], audit: AuditBatch | None = None,
                           later: Callable[[], AuditBatch] | None = None
                           ) -> list[OutboxItem]:
        """Queue a transaction for the writer; return once it has committed."""
        items = []
        for out in outbox:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            statements.append((
                "INSERT INTO outbox (seq, process_id, url, audience, body, next_attempt)"
                " VALUES (?, ?, ?, ?, ?, 0)", (seq, out.process_id, out.url, out.audience,
                                               out.body)))
            items.append(OutboxItem(seq=seq, process_id=out.process_id, url=out.url,
                                    audience=out.audience, body=out.body))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Txn(statements, cached, future, audit, later))
        self._wake.set()
        await future
        return items

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            self._jtis = None
            if batch:
                self._committing = True
                try:
                    await self._commit(batch)
                finally:
                    self._committing = False

    def _chained(self, batch: list[_Txn]) -> tuple[list[Statement], tuple[int, str], int]:
        """The batch's statements with its audit entries chained on from the current head."""
        statements = [st for txn in batch for st in txn.statements]
        seq, head = self._audit_head
        for txn in batch:
            if txn.audit:
                seq, head = _entry_rows(txn.audit, seq, head, statements)
        return statements, (seq, head), seq - self._audit_head[0]

    async def _commit(self, batch: list[_Txn]) -> None:
        batch = [txn for txn in batch if _made(txn)]
        if not batch:
            return
        statements, head, count = self._chained(batch)
        try:
            await self._run(statements)
        except sqlite3.IntegrityError as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(ConflictError(f"conflicting write: {exc}"))
                return
            for txn in batch:  # replay one by one: only the offender fails
                await self._commit([txn])
            return
        except Exception as exc:  # the database failed: every waiter hears of it
            for txn in batch:
                if not txn.future.done():
                    txn.future.set_exception(_refusal(exc) if txn.audit else exc)
            return
        self._audit_head = head
        if count:
            self.on_audit(count)
            for txn in batch:
                for done in txn.audit.on_commit if txn.audit else ():
                    done()
        for txn in batch:
            for key, record in txn.cached:
                state = getattr(record, "state", None)
                if state is not None and state.terminal:  # finished processes are rarely read again
                    self._cache.pop(key, None)
                else:
                    self._remember(key, record)
            txn.future.set_result(None)

    async def _run(self, statements: Sequence[Statement]) -> None:
        """One SQLite transaction: each statement's rows in one statement (``_multi_row``;
        tables in first-use order), and its COMMIT (``_atomic``)."""
        grouped: dict[str, list[Sequence[Any]]] = {}
        for sql, args in statements:  # insertion order keeps tables in first-use order
            grouped.setdefault(sql, []).append(args)
        await self._atomic([multi for sql, rows in grouped.items()
                            for multi in _multi_row(sql, rows)])

    async def _write(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """One statement in a transaction of its own; the rows it returned."""
        return await self._atomic([(sql, args)], fetch=True)

    async def _atomic(self, statements: Sequence[Statement], *, fetch: bool = False
                      ) -> list[Any]:
        """Run ``statements`` and their COMMIT as one call on aiosqlite's thread
        (``_atomically``): the thread runs them back to back and the event loop hears of
        it once. A call per statement waited for the loop after each, and on a busy loop each
        wait is a whole iteration of it (bench/README.md, `replicas`). The thread runs one
        call at a time, in the order queued, so no other read or write lands inside the
        transaction; cancelled once queued, the transaction still commits whole or not at
        all. aiosqlite has no public call for a function of ours: ``_execute`` queues one
        (aiosqlite 0.20 to 0.22, pinned in pyproject.toml)."""
        queue: Callable[..., Awaitable[list[Any]]] = self._conn._execute  # untyped
        return await queue(_atomically, self._conn._conn, statements, fetch)

    # -- negotiations and agreements -------------------------------------------------------

    async def get_negotiation(self, id: str) -> Negotiation | None:
        return await self._body("SELECT body FROM negotiations WHERE id = ?", f"n:{id}",
                                self._neg_dec, id)

    async def save_negotiation(
        self, record: Negotiation, *, outbox: Sequence[Outgoing] = (),
        agreement: Agreement | None = None, expect_new: bool = False,
    ) -> list[OutboxItem]:
        # An upsert, never REPLACE: REPLACE deletes the row first, which makes SQLite check
        # (and with foreign keys, scan) the rows referring to it on every step.
        upsert = "" if expect_new else _UPSERT_NEGOTIATION
        statements: list[Statement] = [(
            "INSERT INTO negotiations (id, role, state, consumer_pid, provider_pid,"
            " counterparty, dataset_id, updated_at, body) VALUES (?,?,?,?,?,?,?,?,?)" + upsert,
            (record.id, record.role.value, record.state.value, record.consumer_pid,
             record.provider_pid, record.counterparty_id, record.dataset_id,
             record.updated_at, _enc.encode(record)),
        )]
        if agreement is not None:
            statements.append((
                "INSERT INTO agreements (id, negotiation_id, role, dataset_id, assigner,"
                " assignee, created_at, body) VALUES (?,?,?,?,?,?,?,?)",
                (agreement.id, agreement.negotiation_id, agreement.role, agreement.dataset_id,
                 agreement.assigner, agreement.assignee, agreement.created_at,
                 _enc.encode(agreement)),
            ))
        later = (self._audit.negotiation_later(record, outbox, agreement) if self._audit
                 else None)
        return await self._transaction(statements, outbox, [(f"n:{record.id}", record)],
                                       later=later)

    async def find_negotiation(self, *, counterparty: str | None, role: str,
                               consumer_pid: str | None = None,
                               provider_pid: str | None = None) -> Negotiation | None:
        """The negotiation a peer's pid names in ``role``: its consumerPid (migration 006's
        unique key) or, given instead, its providerPid (migration 008's)."""
        column, pid = ("consumer_pid", consumer_pid) if consumer_pid else (
            "provider_pid", provider_pid)
        rows = await self._rows(
            f"SELECT id FROM negotiations WHERE counterparty IS ? AND {column} = ?"
            " AND role = ? AND duplicate_of IS NULL", (counterparty, pid, role))
        return await self.get_negotiation(rows[0][0]) if rows else None

    async def list_negotiations(self) -> list[Negotiation]:
        rows = await self._rows("SELECT body FROM negotiations ORDER BY updated_at")
        return [self._neg_dec.decode(r[0]) for r in rows]

    async def get_agreement(self, id: str) -> Agreement | None:
        return await self._body("SELECT body FROM agreements WHERE id = ?", f"a:{id}",
                                self._ag_dec, id)

    async def list_agreements(self) -> list[Agreement]:
        rows = await self._rows("SELECT body FROM agreements ORDER BY created_at")
        return [self._ag_dec.decode(r[0]) for r in rows]

    async def save_agreement(self, agreement: Agreement) -> None:
        """Rewrite an agreement's record (its revocation); the contract itself never changes."""
        audit = self._audit.revocation(agreement) if self._audit and agreement.revoked else None
        await self._transaction([(
            "UPDATE agreements SET body = ? WHERE id = ?",
            (_enc.encode(agreement), agreement.id))], (), [(f"a:{agreement.id}", agreement)],
            audit)

    # -- transfers ------------------------------------------------------------------------

    async def get_transfer(self, id: str) -> Transfer | None:
        return await self._body("SELECT body FROM transfers WHERE id = ?", f"t:{id}",
                                self._tr_dec, id)

    async def find_transfer(self, *, consumer_pid: str, role: str,
                            counterparty: str | None = None) -> Transfer | None:
        """The transfer a consumerPid names in ``role``; with ``counterparty``, the one that
        peer's consumerPid names (migration 006's unique key)."""
        if counterparty is None:
            rows = await self._rows("SELECT id FROM transfers WHERE consumer_pid = ? AND role = ?"
                                    " ORDER BY rowid LIMIT 1", (consumer_pid, role))
        else:
            rows = await self._rows(
                "SELECT id FROM transfers WHERE counterparty IS ? AND consumer_pid = ?"
                " AND role = ? AND duplicate_of IS NULL", (counterparty, consumer_pid, role))
        return await self.get_transfer(rows[0][0]) if rows else None

    async def find_transfer_by_token(self, token_hash: str) -> Transfer | None:
        rows = await self._rows("SELECT id FROM transfers WHERE token_hash = ?"
                                " OR prev_token_hash = ?", (token_hash, token_hash))
        return await self.get_transfer(rows[0][0]) if rows else None

    async def save_transfer(
        self, record: Transfer, *, outbox: Sequence[Outgoing] = (), expect_new: bool = False,
    ) -> list[OutboxItem]:
        upsert = "" if expect_new else _UPSERT_TRANSFER
        later = self._audit.transfer_later(record, outbox) if self._audit else None
        return await self._transaction([(
            "INSERT INTO transfers (id, role, state, consumer_pid, provider_pid, counterparty,"
            " agreement_id, token_hash, prev_token_hash, updated_at, body)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)" + upsert,
            (record.id, record.role.value, record.state.value, record.consumer_pid,
             record.provider_pid, record.counterparty_id, record.agreement_id,
             record.token_hash, record.prev_token_hash, record.updated_at, _enc.encode(record)),
        )], outbox, [(f"t:{record.id}", record)], later=later)

    async def list_transfers(self, agreement_id: str | None = None) -> list[Transfer]:
        if agreement_id is None:
            rows = await self._rows("SELECT body FROM transfers ORDER BY updated_at")
        else:
            rows = await self._rows("SELECT body FROM transfers WHERE agreement_id = ?"
                                    " ORDER BY updated_at", (agreement_id,))
        return [self._tr_dec.decode(r[0]) for r in rows]

    async def add_use(self, agreement_id: str, delta: int) -> int:
        """Add ``delta`` to an agreement's use count atomically; return the new count."""
        rows = await self._write(
            "INSERT INTO agreement_uses (agreement_id, uses) VALUES (?, ?)"
            " ON CONFLICT (agreement_id) DO UPDATE SET uses = uses + excluded.uses"
            " RETURNING uses", (agreement_id, delta))
        return int(rows[0][0])

    # -- audit trail (service.audit.AuditLog) -------------------------------------------------

    async def append_audit(self, batch: AuditBatch) -> None:
        """Events that are a step of their own (a catalogue answer, a data access, a reload)."""
        if self._audit is not None and batch:
            await self._transaction([], (), [], batch)

    def append_audit_behind(self, batch: AuditBatch) -> None:
        """Events of a step that changes no state (a catalogue answer): they join the next
        group commit, write-behind like seen token ids, and are chained there in order."""
        if self._audit is not None and batch:
            txn = self._behind()
            if txn.audit is None:
                txn.audit = AuditBatch()
            txn.audit.events.extend(batch.events)
            txn.audit.evidence.extend(batch.evidence)

    async def audit_head(self) -> tuple[int, str]:
        """(seq, hash) of the last committed entry; (0, GENESIS) when there is none."""
        return self._audit_head

    async def last_checkpoint(self) -> tuple[int, float]:
        rows = await self._rows("SELECT seq, at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
        return (int(rows[0][0]), float(rows[0][1])) if rows else (0, 0.0)

    async def add_checkpoint(self, seq: int, at: float, jws: str) -> None:
        await self._transaction([(
            "INSERT INTO audit_checkpoints (seq, at, jws) VALUES (?, ?, ?)"
            " ON CONFLICT (seq) DO NOTHING", (seq, at, jws))], (), [])

    # -- pages for the console: filtered and counted in SQL, bodies decoded per page --------

    async def _page(self, table: str, subject: str, order: str, query: ListQuery
                    ) -> tuple[int, list[Any]]:
        filters = [(c, v) for c, v in (("state", query.state), ("role", query.role),
                                       (subject, query.subject)) if v]
        where = " AND ".join(f"{column} = ?" for column, _ in filters)
        where = f" WHERE {where}" if where else ""
        args = [v for _, v in filters]
        total = (await self._rows(f"SELECT COUNT(*) FROM {table}{where}", args))[0][0]
        rows = await self._rows(f"SELECT body FROM {table}{where} ORDER BY {order} DESC "
                                "LIMIT ? OFFSET ?", [*args, query.limit, query.offset])
        return int(total), [r[0] for r in rows]

    async def state_counts(self, kind: str) -> dict[str, int]:
        table = {"negotiations": "negotiations", "transfers": "transfers"}[kind]
        rows = await self._rows(f"SELECT state, COUNT(*) FROM {table} GROUP BY state "
                                "ORDER BY state")
        return {str(state): int(count) for state, count in rows}

    async def agreement_uses(self, agreement_id: str) -> int:
        rows = await self._rows("SELECT uses FROM agreement_uses WHERE agreement_id = ?",
                                (agreement_id,))
        return int(rows[0][0]) if rows else 0

    # -- seen token ids ---------------------------------------------------------------------

    def record_jti(self, jti: str, until: int) -> None:
        """Queue a seen jti for the writer's next group commit; never waits (write-behind)."""
        self._behind().statements.append((_RECORD_JTI, (jti, until)))

    def _behind(self) -> _Txn:
        """The write-behind transaction joining the next group commit (JTI_FLUSH_S at most)."""
        txn = self._jtis
        if txn is None:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_log_jti_failure)
            txn = self._jtis = _Txn([], [], future)
            self._pending.append(txn)
            asyncio.get_running_loop().call_later(JTI_FLUSH_S, self._wake.set)
        return txn

    async def live_jtis(self, now: int) -> list[tuple[str, int]]:
        rows = await self._rows("SELECT jti, until FROM seen_tokens WHERE until >= ?"
                                " ORDER BY until", (now,))
        return [(str(r[0]), int(r[1])) for r in rows]

    async def purge_jtis(self, now: int) -> None:
        await self._transaction([("DELETE FROM seen_tokens WHERE until < ?", (now,))], (), [])

    # -- outbox ---------------------------------------------------------------------------

    async def pending_outbox(self) -> list[OutboxItem]:
        rows = await self._rows(
            "SELECT seq, process_id, url, audience, body, attempts FROM outbox ORDER BY seq")
        return [OutboxItem(seq=r[0], process_id=r[1], url=r[2], audience=r[3], body=r[4],
                           attempts=r[5]) for r in rows]

    async def outbox_done(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        await self._atomic([("DELETE FROM outbox WHERE seq = ?", (seq,)) for seq in seqs])

    async def outbox_retry(self, seq: int, attempts: int, next_attempt: float, error: str) -> None:
        await self._write(
            "UPDATE outbox SET attempts = ?, next_attempt = ?, last_error = ? WHERE seq = ?",
            (attempts, next_attempt, error, seq))


def _entry_rows(batch: AuditBatch, seq: int, head: str, rows: list[Statement]
                ) -> tuple[int, str]:
    """Append a step's rows to ``rows``, numbered on from entry ``seq`` (hashing to ``head``):
    one per entry (the chained body, the ids it concerns, two at most, and on the step's
    first entry the evidence it names), then its shared evidence, to its own table. Returns
    the new head."""
    refs, own, shared = batch.stored()
    for event, (ref1, ref2) in zip(batch.events, refs, strict=True):
        seq += 1
        entry = make_entry(seq, head, event)
        head = entry.hash
        rows.append((_INSERT_ENTRY, (seq, entry.digest, head, entry.body, ref1, ref2, own)))
        own = None
    rows.extend((_INSERT_SHARED, e) for e in shared)
    return seq, head


# Rows one multi-row INSERT takes at most (SQLite allows 32766 parameters since 3.32).
MAX_ROWS_PER_INSERT = 256
_VALUES = re.compile(r"VALUES (\([^()]*\))")


@functools.lru_cache(maxsize=256)
def _values_times(sql: str, n: int) -> str:
    """``sql`` (an INSERT with one ``VALUES (...)``) taking ``n`` rows."""
    match = _VALUES.search(sql)
    assert match is not None
    return f"{sql[:match.start(1)]}{', '.join([match.group(1)] * n)}{sql[match.end(1):]}"


def _multi_row(sql: str, rows: list[Sequence[Any]]) -> list[tuple[str, list[Any]]]:
    """The statements that apply ``sql`` to ``rows``: an INSERT's rows in multi-row INSERTs
    (one call into SQLite, where ``executemany`` makes one per row, each a round of the GIL
    with the busy event loop's thread), any other statement once per row. Rows apply in
    order either way, so an upsert of one key twice ends with the later row."""
    if not sql.startswith("INSERT") or _VALUES.search(sql) is None:
        return [(sql, list(args)) for args in rows]
    out = []
    for i in range(0, len(rows), MAX_ROWS_PER_INSERT):
        part = rows[i:i + MAX_ROWS_PER_INSERT]
        out.append((_values_times(sql, len(part)), [a for args in part for a in args]))
    return out


def _atomically(conn: sqlite3.Connection, statements: Sequence[Statement], fetch: bool
                ) -> list[Any]:
    """On aiosqlite's thread: ``statements`` in one transaction (the connection opens it
    before the first write, ``isolation_level="IMMEDIATE"``), committed, or rolled back if
    one failed; the rows of the last if ``fetch``."""
    try:
        rows: list[Any] = []
        for sql, args in statements:
            cursor = conn.execute(sql, args)
            if fetch:
                rows = cursor.fetchall()
        conn.commit()
        return rows
    except BaseException:
        conn.rollback()
        raise


def _made(txn: _Txn) -> bool:
    """Make a transaction's audit entries if they are still to make (once: a replayed
    transaction reuses them); False, and the step refused, if that failed."""
    if txn.later is not None:
        later, txn.later = txn.later, None
        try:
            txn.audit = later()
        except Exception as exc:
            txn.future.set_exception(_refusal(exc))
            return False
    return True


def _refusal(exc: Exception) -> AuditError:
    """The step is refused because its audit entry could not be written with it."""
    return AuditError(f"refused: the step and its audit entry could not be written ({exc}); "
                      "nothing was changed")


def _log_jti_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("cannot persist seen token ids (replays stay refused until a restart) "
                  "nor catalogue answers' audit entries: %s", future.exception())


async def _chain_head(conn: aiosqlite.Connection) -> tuple[int, str]:
    """(seq, hash) the chain goes on from: its last entry; when a prune removed every entry,
    the checkpoint it kept (signed over that head); else GENESIS."""
    rows = list(await conn.execute_fetchall(
        "SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1"))
    if rows:
        return int(rows[0][0]), str(rows[0][1])
    rows = list(await conn.execute_fetchall(
        "SELECT jws FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"))
    if not rows:
        return 0, GENESIS
    kept = parse_checkpoint(str(rows[0][0]))
    return kept.seq, kept.head
