"""The registry's SQLite store: latest snapshot per publisher, datasets, FTS5, change feed.

One writer connection and one reader connection on the same WAL file, so a search never
waits behind a publication. Each connection lives in its own thread and every store method
runs there as one function, one hop (synapse's ``runInteraction``): aiosqlite costs a hop per
statement, and a publication of 20 datasets took 8 statements, ~8 ms on two cores instead of
~2 ms. This process is the only writer: the head of every entry
(``iat``, ETag, expiry, version) is kept in memory, so a conditional publication
(``If-None-Match``) and the last-writer-wins check cost no database round trip (each hop to
aiosqlite's thread costs 60-300 µs, perf-limits §4).

Search is FTS5 over title, description and keywords (bm25 order), with exact filters on the
facet tables. Facet counts are computed over the whole match set; the unfiltered browse is the
only query whose facets cover every dataset, so its facets are reused until the next change.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from connector.registry.model import Snapshot, newer

T = TypeVar("T")
Statement = tuple[str, Sequence[Any]]
# Facet values returned per facet (the most frequent first).
FACET_SIZE = 10
FACET_KINDS = ("keyword", "theme", "format")
# Search words taken from a query; more than this is a document, not a query.
MAX_QUERY_WORDS = 8
MAX_PAGE = 100
# Facets are exact up to this many matches; past it they count the best-ranked FACET_SAMPLE
# (and say so): counting terms over a third of 100,000 datasets costs ~100 ms here.
FACET_EXACT_LIMIT = 5_000
FACET_SAMPLE = 2_000


@dataclass(frozen=True)
class Head:
    """What the registry holds for one publisher, without its datasets."""

    issued_at: int
    etag: str
    expires_at: int
    version: int


@dataclass(frozen=True)
class SearchQuery:
    text: str = ""
    publisher: str | None = None
    keyword: str | None = None
    theme: str | None = None
    format: str | None = None
    limit: int = 20
    offset: int = 0


@dataclass
class SearchResult:
    total: int
    items: list[dict[str, Any]]
    facets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    facets_exact: bool = True  # False: counted over the best-ranked FACET_SAMPLE matches


def fts_expression(text: str) -> str:
    """A user's words as an FTS5 query: each word quoted (no operators), all required."""
    words = re.findall(r"\w+", text.lower())[:MAX_QUERY_WORDS]
    return " ".join(f'"{w}"' for w in words)


def migrations() -> list[tuple[int, str]]:
    folder = resources.files("connector.registry") / "migrations"
    found = [(int(i.name[:3]), i.read_text()) for i in folder.iterdir()
             if i.name.endswith(".sql") and i.name[:3].isdigit()]
    return sorted(found)


def _top(counts: dict[str, int]) -> list[dict[str, Any]]:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:FACET_SIZE]
    return [{"value": v, "count": n} for v, n in ranked]


class _Connection:
    """One SQLite connection confined to its own thread; ``run(fn)`` is one hop there."""

    def __init__(self, path: Path, name: str, pragmas: Sequence[str]) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"registry-{name}")
        self._path, self._pragmas = path, pragmas
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> None:
        self._conn = sqlite3.connect(self._path, isolation_level=None)
        for pragma in self._pragmas:
            self._conn.execute(pragma)

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        assert conn is not None, "connection not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)

    async def close(self) -> None:
        if self._conn is not None:
            await self.run(lambda c: c.close())
        self._executor.shutdown(wait=True)


class RegistryStore:
    def __init__(self, writer: _Connection, reader: _Connection) -> None:
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self.heads: dict[str, Head] = {}
        self.version = 0
        self._next_dataset = 1
        self._browse_facets: tuple[int, int, dict[str, list[dict[str, Any]]]] | None = None

    @classmethod
    async def open(cls, path: Path) -> RegistryStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = _Connection(path, "writer", ["PRAGMA journal_mode=WAL",
                                              "PRAGMA synchronous=NORMAL"])
        await writer.open()
        await writer.run(_migrate)
        reader = _Connection(path, "reader", ["PRAGMA query_only=ON"])
        await reader.open()
        store = cls(writer, reader)
        await store._load_heads()
        return store

    async def _load_heads(self) -> None:
        def load(c: sqlite3.Connection) -> tuple[list[Any], int]:
            rows = c.execute("SELECT publisher, issued_at, etag, expires_at, version "
                             "FROM entries").fetchall()
            return rows, c.execute("SELECT coalesce(max(id), 0) FROM datasets").fetchone()[0]

        rows, last_id = await self._writer.run(load)
        self.heads = {r[0]: Head(r[1], r[2], r[3], r[4]) for r in rows}
        self.version = max((h.version for h in self.heads.values()), default=0)
        self._next_dataset = int(last_id) + 1

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    # -- writes -----------------------------------------------------------------------------

    async def put(self, snap: Snapshot) -> int | None:
        """Store a verified snapshot if it is newer than the one held; its version, else None.

        Last writer wins per publisher (``model.newer``). Same ETag as held: only the entry's
        lifetime changes (a renewal, no re-indexing).
        """
        async with self._write_lock:
            held = self.heads.get(snap.publisher)
            mark = None if held is None else (held.issued_at, held.etag)
            if not newer((snap.issued_at, snap.etag), mark):
                return None
            version = self.version + 1
            renewal = held is not None and held.etag == snap.etag
            await self._run(self._statements(snap, version, renewal=renewal))
            self.version = version
            self.heads[snap.publisher] = Head(snap.issued_at, snap.etag, snap.expires_at,
                                              version)
            return version

    def _statements(self, snap: Snapshot, version: int, *, renewal: bool
                    ) -> list[Statement]:
        entry = ("INSERT OR REPLACE INTO entries (publisher, version, etag, issued_at, "
                 "expires_at, endpoint, jws) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (snap.publisher, version, snap.etag, snap.issued_at, snap.expires_at,
                  snap.endpoint, snap.jws))
        if renewal:
            return [entry, ("UPDATE datasets SET expires_at = ? WHERE publisher = ?",
                            (snap.expires_at, snap.publisher))]
        out = [*_delete_publisher(snap.publisher), entry]
        terms: list[Statement] = []
        for meta in snap.datasets:
            rowid = self._next_dataset
            self._next_dataset += 1
            out.append((_INSERT_DATASET, (
                rowid, snap.publisher, meta.dataset_id, meta.title, meta.description,
                json.dumps(meta.keywords), json.dumps(meta.themes), json.dumps(meta.formats),
                snap.expires_at)))
            for kind, values in (("keyword", meta.keywords), ("theme", meta.themes),
                                 ("format", meta.formats)):
                terms.extend((_INSERT_TERM, (rowid, kind, v)) for v in values)
        return out + terms  # grouped by statement: one executemany each

    async def _run(self, statements: list[Statement]) -> None:
        """One transaction, one hop; consecutive rows of one statement in one executemany."""
        await self._writer.run(lambda c: _transaction(c, statements))

    async def purge_expired(self, now: int) -> int:
        """Delete entries whose lifetime ended; returns how many."""
        async with self._write_lock:
            gone = [p for p, h in self.heads.items() if h.expires_at <= now]
            if gone:
                await self._run([s for p in gone for s in _delete_publisher(p)])
                for p in gone:
                    del self.heads[p]
            return len(gone)

    async def set_replication_cursor(self, peer: str, since: int) -> None:
        async with self._write_lock:
            await self._run([("INSERT OR REPLACE INTO replication (peer, since) VALUES (?, ?)",
                              (peer, since))])

    # -- reads ------------------------------------------------------------------------------

    async def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return await self._reader.run(lambda c: c.execute(sql, args).fetchall())

    async def replication_cursor(self, peer: str) -> int:
        rows = await self._rows("SELECT since FROM replication WHERE peer = ?", (peer,))
        return int(rows[0][0]) if rows else 0

    async def changes(self, since: int, limit: int, now: int) -> list[tuple[int, str]]:
        """Live entries changed after ``since``, oldest change first."""
        rows = await self._rows(
            "SELECT version, jws FROM entries WHERE version > ? AND expires_at > ? "
            "ORDER BY version LIMIT ?", (since, now, limit))
        return [(int(r[0]), str(r[1])) for r in rows]

    async def participant(self, publisher: str, now: int) -> dict[str, Any] | None:
        head = self.heads.get(publisher)
        if head is None or head.expires_at <= now:
            return None
        rows = await self._rows("SELECT endpoint FROM entries WHERE publisher = ?", (publisher,))
        datasets = await self._rows(
            "SELECT dataset_id, title FROM datasets WHERE publisher = ? ORDER BY id", (publisher,))
        return {"participantId": publisher, "endpoint": rows[0][0] if rows else None,
                "etag": head.etag, "issuedAt": head.issued_at, "expiresAt": head.expires_at,
                "datasets": [{"datasetId": d[0], "title": d[1]} for d in datasets]}

    async def search(self, query: SearchQuery, now: int) -> SearchResult:
        source, where, args = _match(query, now)
        order = "bm25(datasets_fts)" if "datasets_fts" in source else "d.id"
        limit = max(1, min(query.limit, MAX_PAGE))
        page = await self._rows(
            f"SELECT d.publisher, d.dataset_id, d.title, d.description, d.keywords, d.themes, "
            f"d.formats, e.endpoint FROM {source} JOIN entries e ON e.publisher = d.publisher "
            f"WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
            [*args, limit, max(0, query.offset)])
        items = [{"participantId": r[0], "datasetId": r[1], "title": r[2], "description": r[3],
                  "keywords": json.loads(r[4]), "themes": json.loads(r[5]),
                  "formats": json.loads(r[6]), "endpoint": r[7]} for r in page]
        total, facets = await self._facets(query, source, where, args, now)
        return SearchResult(total=total, items=items, facets=facets,
                            facets_exact=total <= FACET_EXACT_LIMIT or query == SearchQuery(
                                limit=query.limit, offset=query.offset))

    async def _facets(self, query: SearchQuery, source: str, where: str, args: list[Any],
                      now: int) -> tuple[int, dict[str, list[dict[str, Any]]]]:
        browse = query == SearchQuery(limit=query.limit, offset=query.offset)
        cached = self._browse_facets
        if browse and cached is not None and cached[0] == self.version and cached[1] > now:
            facets = cached[2]
            return facets["_total"][0]["count"], _public(facets)
        total = (await self._rows(f"SELECT count(*) FROM {source} WHERE {where}", args))[0][0]
        # Exact facets over small match sets; over a broad one, over its best-ranked part
        # (as a search engine's sampler does), flagged in "_sampled".
        order = "bm25(datasets_fts)" if "datasets_fts" in source else "d.id"
        sampled = total > FACET_EXACT_LIMIT and not browse
        matched = (f"SELECT d.id AS id, d.publisher AS publisher FROM {source} WHERE {where}"
                   + (f" ORDER BY {order} LIMIT {FACET_SAMPLE}" if sampled else ""))
        by_publisher, terms = await self._reader.run(
            lambda c: (c.execute(f"SELECT publisher, count(*) FROM ({matched}) "
                                 "GROUP BY publisher", args).fetchall(),
                       c.execute(f"SELECT t.kind, t.value, count(*) FROM terms t WHERE "
                                 f"t.dataset IN (SELECT id FROM ({matched})) "
                                 "GROUP BY t.kind, t.value", args).fetchall()))
        per_kind: dict[str, dict[str, int]] = {k: {} for k in FACET_KINDS}
        for kind, value, n in terms:
            per_kind[kind][value] = n
        facets = {"publisher": _top({r[0]: int(r[1]) for r in by_publisher}),
                  **{k: _top(v) for k, v in per_kind.items()},
                  "_total": [{"value": "", "count": int(total)}]}
        if sampled:
            facets["_sampled"] = [{"value": "best-ranked", "count": FACET_SAMPLE}]
        if browse:
            # Valid until the next change or the earliest expiry, whichever comes first.
            soonest = min((h.expires_at for h in self.heads.values()), default=now + 60)
            self._browse_facets = (self.version, soonest, facets)
        return int(total), _public(facets)


def _public(facets: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {k: v for k, v in facets.items() if not k.startswith("_")}


_INSERT_DATASET = ("INSERT INTO datasets (id, publisher, dataset_id, title, description, "
                   "keywords, themes, formats, expires_at) VALUES (?,?,?,?,?,?,?,?,?)")
_INSERT_TERM = "INSERT INTO terms (dataset, kind, value) VALUES (?, ?, ?)"


def _delete_publisher(publisher: str) -> list[Statement]:
    return [
        ("DELETE FROM terms WHERE dataset IN (SELECT id FROM datasets WHERE publisher = ?)",
         (publisher,)),
        ("DELETE FROM datasets WHERE publisher = ?", (publisher,)),
        ("DELETE FROM entries WHERE publisher = ?", (publisher,)),
    ]


def _match(query: SearchQuery, now: int) -> tuple[str, str, list[Any]]:
    """FROM clause, WHERE clause and arguments selecting the live datasets a query matches."""
    source, where = "datasets d", ["d.expires_at > ?"]
    args: list[Any] = [now]
    expression = fts_expression(query.text)
    if expression:
        source = "datasets_fts JOIN datasets d ON d.id = datasets_fts.rowid"
        where.append("datasets_fts MATCH ?")
        args.append(expression)
    if query.publisher:
        where.append("d.publisher = ?")
        args.append(query.publisher)
    for kind in FACET_KINDS:
        value = getattr(query, kind)
        if value:
            where.append("d.id IN (SELECT dataset FROM terms WHERE kind = ? AND value = ?)")
            args += [kind, value]
    return source, " AND ".join(where), args


def _migrate(conn: sqlite3.Connection) -> None:
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for number, sql in migrations():
        if number > current:
            conn.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")


def _transaction(conn: sqlite3.Connection, statements: list[Statement]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        i = 0
        while i < len(statements):
            j = i
            while j < len(statements) and statements[j][0] == statements[i][0]:
                j += 1
            conn.executemany(statements[i][0], [s[1] for s in statements[i:j]])
            i = j
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
