"""The embedded SQLite store (aiosqlite, WAL, numbered migrations).

One connection, one writer: every transaction runs under one asyncio lock, so a step's
statements never interleave with another's. ``synchronous=NORMAL`` in WAL mode keeps commits
durable across a process crash (not across power loss), which is SQLite's documented trade-off.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from connector.core.errors import ConflictError
from connector.core.negotiation import Negotiation
from connector.core.transfer import Transfer
from connector.service.store import Agreement, OutboxItem, Outgoing

T = TypeVar("T")
_enc = msgspec.json.Encoder()


def migrations() -> list[tuple[int, str]]:
    """The numbered SQL migrations shipped in the package, in order."""
    folder = resources.files("connector.adapters.storage") / "migrations"
    found = []
    for item in folder.iterdir():
        name = item.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), item.read_text()))
    return sorted(found)


class SqliteStore:
    """``Store`` on one SQLite file."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._neg_dec = msgspec.json.Decoder(Negotiation)
        self._tr_dec = msgspec.json.Decoder(Transfer)
        self._ag_dec = msgspec.json.Decoder(Agreement)

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        store = cls(conn)
        await store._migrate()
        return store

    async def _migrate(self) -> None:
        async with self._conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        for number, sql in migrations():
            if number > current:
                await self._conn.executescript(
                    f"BEGIN;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")

    async def close(self) -> None:
        await self._conn.close()

    # -- helpers ------------------------------------------------------------------------

    async def _one(self, sql: str, args: Sequence[Any]) -> Any:
        async with self._lock, self._conn.execute(sql, args) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self._lock, self._conn.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _transaction(self, statements: Sequence[tuple[str, Sequence[Any]]],
                           outbox: Sequence[Outgoing]) -> list[OutboxItem]:
        """Run ``statements`` and insert ``outbox`` atomically; return the queued items."""
        items: list[OutboxItem] = []
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    await self._conn.execute(sql, args)
                for out in outbox:
                    cur = await self._conn.execute(
                        "INSERT INTO outbox (process_id, url, audience, body, next_attempt)"
                        " VALUES (?, ?, ?, ?, 0)",
                        (out.process_id, out.url, out.audience, out.body))
                    assert cur.lastrowid is not None
                    items.append(OutboxItem(seq=cur.lastrowid, process_id=out.process_id,
                                            url=out.url, audience=out.audience, body=out.body))
                await self._conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                await self._conn.execute("ROLLBACK")
                raise ConflictError(f"conflicting write: {exc}") from exc
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
        return items

    # -- negotiations and agreements -------------------------------------------------------

    async def get_negotiation(self, id: str) -> Negotiation | None:
        row = await self._one("SELECT body FROM negotiations WHERE id = ?", (id,))
        return self._neg_dec.decode(row[0]) if row else None

    async def save_negotiation(
        self, record: Negotiation, *, outbox: Sequence[Outgoing] = (),
        agreement: Agreement | None = None, expect_new: bool = False,
    ) -> list[OutboxItem]:
        verb = "INSERT" if expect_new else "INSERT OR REPLACE"
        statements: list[tuple[str, Sequence[Any]]] = [(
            f"{verb} INTO negotiations (id, role, state, consumer_pid, provider_pid,"
            " counterparty, dataset_id, updated_at, body) VALUES (?,?,?,?,?,?,?,?,?)",
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
        return await self._transaction(statements, outbox)

    async def list_negotiations(self) -> list[Negotiation]:
        rows = await self._all("SELECT body FROM negotiations ORDER BY updated_at")
        return [self._neg_dec.decode(r[0]) for r in rows]

    async def get_agreement(self, id: str) -> Agreement | None:
        row = await self._one("SELECT body FROM agreements WHERE id = ?", (id,))
        return self._ag_dec.decode(row[0]) if row else None

    async def list_agreements(self) -> list[Agreement]:
        rows = await self._all("SELECT body FROM agreements ORDER BY created_at")
        return [self._ag_dec.decode(r[0]) for r in rows]

    # -- transfers ------------------------------------------------------------------------

    async def get_transfer(self, id: str) -> Transfer | None:
        row = await self._one("SELECT body FROM transfers WHERE id = ?", (id,))
        return self._tr_dec.decode(row[0]) if row else None

    async def find_transfer(self, *, consumer_pid: str, role: str) -> Transfer | None:
        row = await self._one(
            "SELECT body FROM transfers WHERE consumer_pid = ? AND role = ?", (consumer_pid, role))
        return self._tr_dec.decode(row[0]) if row else None

    async def find_transfer_by_token(self, token_hash: str) -> Transfer | None:
        row = await self._one("SELECT body FROM transfers WHERE token_hash = ?", (token_hash,))
        return self._tr_dec.decode(row[0]) if row else None

    async def save_transfer(
        self, record: Transfer, *, outbox: Sequence[Outgoing] = (), expect_new: bool = False,
    ) -> list[OutboxItem]:
        verb = "INSERT" if expect_new else "INSERT OR REPLACE"
        return await self._transaction([(
            f"{verb} INTO transfers (id, role, state, consumer_pid, provider_pid, counterparty,"
            " agreement_id, token_hash, updated_at, body) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (record.id, record.role.value, record.state.value, record.consumer_pid,
             record.provider_pid, record.counterparty_id, record.agreement_id,
             record.token_hash, record.updated_at, _enc.encode(record)),
        )], outbox)

    async def list_transfers(self) -> list[Transfer]:
        rows = await self._all("SELECT body FROM transfers ORDER BY updated_at")
        return [self._tr_dec.decode(r[0]) for r in rows]

    async def add_use(self, agreement_id: str, delta: int) -> int:
        """Add ``delta`` to an agreement's use count atomically; return the new count."""
        async with self._lock, self._conn.execute(
            "INSERT INTO agreement_uses (agreement_id, uses) VALUES (?, ?)"
            " ON CONFLICT (agreement_id) DO UPDATE SET uses = uses + excluded.uses"
            " RETURNING uses", (agreement_id, delta),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    # -- outbox ---------------------------------------------------------------------------

    async def pending_outbox(self) -> list[OutboxItem]:
        rows = await self._all(
            "SELECT seq, process_id, url, audience, body, attempts FROM outbox ORDER BY seq")
        return [OutboxItem(seq=r[0], process_id=r[1], url=r[2], audience=r[3], body=r[4],
                           attempts=r[5]) for r in rows]

    async def outbox_done(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        async with self._lock:
            await self._conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    async def outbox_retry(self, seq: int, attempts: int, next_attempt: float, error: str) -> None:
        async with self._lock:
            await self._conn.execute(
                "UPDATE outbox SET attempts = ?, next_attempt = ?, last_error = ? WHERE seq = ?",
                (attempts, next_attempt, error, seq))
