"""The audit tables read (and pruned) directly in the database, for ``connector audit``.

The commands run beside a daemon or without one: SQLite's locking lets them read while the
daemon writes (WAL), and the daemon's only in-memory state about the trail is the chain's
head, which a prune of old entries never touches. When the state is in PostgreSQL
(``[storage] postgres_dsn_file``) the same statements run there, each call one transaction.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from connector.adapters.storage import engine
from connector.config import Settings
from connector.core.audit import Entry
from connector.core.errors import AuditError, ConfigError


@dataclass(frozen=True)
class SharedDatabase:
    """The PostgreSQL database a DSN file names."""

    dsn_file: Path


Where = Path | SharedDatabase
Query = tuple[str, Sequence[Any]]


def location(settings: Settings) -> Where:
    """Where ``settings`` keep the audit trail: the SQLite file, or the shared database."""
    dsn_file = settings.postgres_dsn_file
    return SharedDatabase(dsn_file) if dsn_file is not None else settings.database


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...``."""
    count = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _m: f"${next(count)}", sql)


async def _pg_run(db: SharedDatabase, queries: Sequence[Query]) -> list[list[Any]]:
    dsn = engine.read_dsn(db.dsn_file)
    try:
        conn = await asyncpg.connect(dsn, timeout=engine.CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError,
            asyncpg.InterfaceError) as exc:
        raise ConfigError(f"postgres_dsn_file {db.dsn_file}: cannot reach the database "
                          f"({type(exc).__name__})") from None
    try:
        async with conn.transaction():
            return [[tuple(r) for r in await conn.fetch(_numbered(sql), *args)]
                    for sql, args in queries]
    except asyncpg.PostgresError as exc:
        raise AuditError(f"{db.dsn_file}: cannot read the audit trail: {exc}") from exc
    finally:
        await conn.close()


def _run(db: Where, queries: Sequence[Query], *, write: bool = False) -> list[list[Any]]:
    """Each query's rows, all in one transaction."""
    if isinstance(db, SharedDatabase):
        return asyncio.run(_pg_run(db, queries))
    with closing(_connect(db, write=write)) as conn, conn:
        return [list(conn.execute(sql, args)) for sql, args in queries]


def _connect(path: Path, *, write: bool = False) -> sqlite3.Connection:
    if not path.exists():
        raise AuditError(f"{path}: no database (has the connector ever run here?)")
    uri = f"file:{path}?mode={'rw' if write else 'ro'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
        conn.execute("SELECT 1 FROM audit_entries LIMIT 1")
    except sqlite3.Error as exc:
        raise AuditError(f"{path}: cannot read the audit trail: {exc}") from exc
    return conn


def _entries(rows: Iterable[tuple[int, str, str, bytes | str]]) -> list[Entry]:
    # A body edited by hand may come back as TEXT: its bytes are what the digest is over.
    return [Entry(seq=int(r[0]), digest=str(r[1]), hash=str(r[2]),
                  body=r[3].encode() if isinstance(r[3], str) else bytes(r[3])) for r in rows]


def read_chain(path: Where) -> tuple[list[Entry], list[str]]:
    """Every entry in order of ``seq`` and every checkpoint JWS."""
    entries, checkpoints = _run(path, [
        ("SELECT seq, digest, hash, body FROM audit_entries ORDER BY seq", ()),
        ("SELECT jws FROM audit_checkpoints ORDER BY seq", ())])
    return _entries(entries), [str(r[0]) for r in checkpoints]


def read_refs(path: Where, refs: Iterable[str]) -> list[int]:
    """The sequence numbers of the entries concerning any of ``refs``, in order."""
    found = _run(path, [("SELECT seq FROM audit_refs WHERE ref = ?", (ref,)) for ref in refs])
    return sorted({int(r[0]) for rows in found for r in rows})


def read_evidence(path: Where, digests: Iterable[str]) -> dict[str, tuple[str, bytes]]:
    """digest -> (kind, content) of the evidence kept beside the chain."""
    wanted = list(dict.fromkeys(digests))
    found = _run(path, [("SELECT kind, content FROM audit_evidence WHERE digest = ?", (d,))
                        for d in wanted])
    return {digest: (str(kind), bytes(content))
            for digest, rows in zip(wanted, found, strict=True) for kind, content in rows}


def add_checkpoint(path: Where, seq: int, at: float, jws: str) -> None:
    _run(path, [("INSERT INTO audit_checkpoints (seq, at, jws) VALUES (?, ?, ?)"
                 " ON CONFLICT (seq) DO NOTHING", (seq, at, jws))], write=True)


def checkpoints_before(path: Where, before: float) -> list[tuple[int, float]]:
    """(seq, at) of the checkpoints signed before ``before``, oldest first."""
    rows = _run(path, [("SELECT seq, at FROM audit_checkpoints WHERE at < ? ORDER BY seq",
                        (before,))])[0]
    return [(int(r[0]), float(r[1])) for r in rows]


def prune_through(path: Where, seq: int) -> int:
    """Delete the entries up to and including ``seq`` and the checkpoints before it (the one
    at ``seq`` stays: the kept chain starts from its signed head). Returns entries deleted."""
    deleted, _, _ = _run(path, [
        ("DELETE FROM audit_entries WHERE seq <= ? RETURNING seq", (seq,)),
        ("DELETE FROM audit_refs WHERE seq <= ?", (seq,)),
        ("DELETE FROM audit_checkpoints WHERE seq < ?", (seq,))], write=True)
    return len(deleted)
