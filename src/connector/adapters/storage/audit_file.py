"""The audit tables read (and pruned) directly in the participant's database, for
``connector audit`` and the console's audit page: the SQLite file, or the PostgreSQL database
``[storage] postgres_dsn_file`` names (the same tables on both engines, migration 007).

The commands run beside a daemon or without one: SQLite's locking lets them read while the
daemon writes (WAL), PostgreSQL's transactions likewise, and the daemon's only in-memory
state about the trail is the chain's head, which a prune of old entries never touches. Each
query is written once, with ``?`` placeholders; ``PostgresTables`` numbers them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from connector.adapters.storage import engine
from connector.config import Settings
from connector.core.audit import Entry
from connector.core.errors import AuditError

# Entries read at a time when walking the whole chain.
CHUNK = 5_000
# The evidence column of an entry (written by ``sqlite._entry_rows`` and ``postgres``).
_evidence = msgspec.msgpack.Decoder(list[tuple[str, str, bytes]])
Row = tuple[Any, ...]


class AuditTables:
    """The audit tables of one participant; ``rows`` and ``change`` are the engine's."""

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    def change(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run a write in its own transaction; the rows it touched."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def iter_chain(self, chunk: int = CHUNK) -> Iterator[Entry]:
        """Every entry in order of ``seq``, read ``chunk`` at a time (memory stays flat)."""
        after = -1
        while True:
            rows = _entries(self.rows("SELECT seq, digest, hash, body FROM audit_entries"
                                      " WHERE seq > ? ORDER BY seq LIMIT ?", (after, chunk)))
            yield from rows
            if len(rows) < chunk:
                return
            after = rows[-1].seq

    def read_range(self, first: int, last: int) -> list[Entry]:
        """The entries numbered ``first`` to ``last``, in order."""
        return _entries(self.rows("SELECT seq, digest, hash, body FROM audit_entries"
                                  " WHERE seq BETWEEN ? AND ? ORDER BY seq", (first, last)))

    def read_checkpoints(self) -> list[str]:
        return [str(r[0]) for r in self.rows("SELECT jws FROM audit_checkpoints ORDER BY seq")]

    def read_head(self) -> Entry | None:
        """The last entry, or None when the trail is empty."""
        found = _entries(self.rows("SELECT seq, digest, hash, body FROM audit_entries"
                                   " ORDER BY seq DESC LIMIT 1"))
        return found[0] if found else None

    def read_refs(self, refs: Iterable[str]) -> list[int]:
        """The sequence numbers of the entries concerning any of ``refs``, in order."""
        seqs: set[int] = set()
        for ref in refs:
            seqs.update(int(r[0]) for r in self.rows(
                "SELECT seq FROM audit_entries WHERE ref1 = ? UNION"
                " SELECT seq FROM audit_entries WHERE ref2 = ?", (ref, ref)))
        return sorted(seqs)

    def read_entries(self, seqs: Iterable[int]) -> list[Entry]:
        """The entries with these numbers (those still there), in order."""
        return _entries([row for seq in sorted(set(seqs)) for row in self.rows(
            "SELECT seq, digest, hash, body FROM audit_entries WHERE seq = ?", (seq,))])

    def read_evidence(self, seqs: Iterable[int], digests: Iterable[str]
                      ) -> dict[str, tuple[str, bytes]]:
        """digest -> (kind, content) of the evidence kept with entries ``seqs`` and of the
        shared evidence among ``digests``."""
        out: dict[str, tuple[str, bytes]] = {}
        for seq in sorted(set(seqs)):
            for (kept,) in self.rows("SELECT evidence FROM audit_entries WHERE seq = ? AND"
                                     " evidence IS NOT NULL", (seq,)):
                for digest, kind, content in _evidence.decode(bytes(kept)):
                    out[digest] = (kind, content)
        for digest in dict.fromkeys(digests):
            for kind, content in self.rows(
                    "SELECT kind, content FROM audit_shared WHERE digest = ?", (digest,)):
                out[digest] = (str(kind), bytes(content))
        return out

    def add_checkpoint(self, seq: int, at: float, jws: str) -> None:
        self.change("INSERT INTO audit_checkpoints (seq, at, jws) VALUES (?, ?, ?)"
                    " ON CONFLICT (seq) DO NOTHING", (seq, at, jws))

    def checkpoints_before(self, before: float) -> list[tuple[int, float]]:
        """(seq, at) of the checkpoints signed before ``before``, oldest first."""
        return [(int(r[0]), float(r[1])) for r in self.rows(
            "SELECT seq, at FROM audit_checkpoints WHERE at < ? ORDER BY seq", (before,))]

    def prune_through(self, seq: int) -> int:
        """Delete the entries up to and including ``seq``, the evidence kept with them, and
        the checkpoints before it (the one at ``seq`` stays: the kept chain starts from its
        signed head). Returns the entries deleted."""
        deleted = self.change("DELETE FROM audit_entries WHERE seq <= ?", (seq,))
        self.change("DELETE FROM audit_checkpoints WHERE seq < ?", (seq,))
        return deleted


class SqliteTables(AuditTables):
    """The tables in the SQLite file ``path``: read-only, a write on a connection of its own."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._read = self._connect(write=False)

    def _connect(self, *, write: bool) -> sqlite3.Connection:
        if not self._path.exists():
            raise AuditError(f"{self._path}: no database (has the connector ever run here?)")
        uri = f"file:{self._path}?mode={'rw' if write else 'ro'}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30)
            conn.execute("SELECT 1 FROM audit_entries LIMIT 1")
        except sqlite3.Error as exc:
            raise AuditError(f"{self._path}: cannot read the audit trail: {exc}") from exc
        return conn

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in self._read.execute(sql, tuple(args))]

    def change(self, sql: str, args: Sequence[Any] = ()) -> int:
        with closing(self._connect(write=True)) as conn, conn:
            return int(conn.execute(sql, tuple(args)).rowcount)

    def close(self) -> None:
        self._read.close()


class PostgresTables(AuditTables):
    """The tables in the PostgreSQL database the DSN file ``dsn_file`` names, on one
    connection, driven from this (synchronous) thread by an event loop of its own."""

    def __init__(self, dsn_file: Path) -> None:
        self._where = dsn_file
        self._loop = asyncio.Runner()
        try:
            self._conn = self._loop.run(engine.connect(dsn_file))
        except BaseException:
            self._loop.close()
            raise

    def _run(self, call: Any) -> Any:
        try:
            return self._loop.run(call)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise AuditError(f"postgres_dsn_file {self._where}: cannot read the audit trail:"
                             f" {type(exc).__name__}: {exc}") from None

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in self._run(self._conn.fetch(_numbered(sql), *args))]

    def change(self, sql: str, args: Sequence[Any] = ()) -> int:
        status = str(self._run(self._conn.execute(_numbered(sql), *args)))
        return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0

    def close(self) -> None:
        try:
            self._loop.run(self._conn.close())
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            pass  # the connection is gone already
        finally:
            self._loop.close()


@contextmanager
def open_tables(settings: Settings) -> Iterator[AuditTables]:
    """The audit tables of the participant ``settings`` describe, on its engine."""
    tables: AuditTables = (SqliteTables(settings.database) if settings.postgres_dsn_file is None
                           else PostgresTables(settings.postgres_dsn_file))
    try:
        yield tables
    finally:
        tables.close()


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...``."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))


def _entries(rows: Iterable[Row]) -> list[Entry]:
    # A body edited by hand may come back as TEXT: its bytes are what the digest is over.
    return [Entry(seq=int(r[0]), digest=str(r[1]), hash=str(r[2]),
                  body=r[3].encode() if isinstance(r[3], str) else bytes(r[3])) for r in rows]
