"""The registry's SQLite store: latest snapshot per publisher, datasets, FTS5, change feed.

One writer connection and one reader connection on the same WAL file, so a search never
waits behind a publication. Each connection lives in its own thread and every store method
runs there as one function, one hop (synapse's ``runInteraction``): aiosqlite costs a hop per
statement, and a publication of 20 datasets took 8 statements, ~8 ms on two cores instead of
~2 ms. This process is the only writer: the head of every entry
(``iat``, ETag, expiry, version) is kept in memory, so a conditional publication
(``If-None-Match``) and the last-writer-wins check cost no database round trip (each hop to
aiosqlite's thread costs 60-300 µs, docs/interop-notes.md §6).

Search is FTS5 over title, description and keywords (bm25 order), with exact filters on the
facet tables; one reader hop per search. A text query reads the FTS5 index alone: one pass
yields the newest RANK_CANDIDATES + 1 matches with their bm25 rank (ranking costs ~1.7 µs per
match whatever the LIMIT, so a word in a third of 100,000 datasets is not ranked in full: the
newest RANK_CANDIDATES are ranked and come first, ``ranked_exactly`` False); the same ids give
the page and the facets. Totals are exact (a count walks the doclists, no ranking). Facets are
exact up to FACET_EXACT_LIMIT matches, else over the best-ranked FACET_SAMPLE (``facets_exact``
False), counted from each dataset's values held in memory (``FacetIndex``). The unfiltered
browse's facets cover every dataset and are reused until the next change or expiry.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

from connector.adapters.storage.sqlite_thread import SqliteThread
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
# bm25 ranks at most this many matches per query (the newest), ~1-2 µs each; at least
# FACET_EXACT_LIMIT (facets over every match are over ranked ones).
RANK_CANDIDATES = 5_000
_NEVER = 2**62
# Seen token ids queue for at most this long, then commit together (one hop, one transaction).
JTI_FLUSH_S = 0.01
_RECORD_JTI = ("INSERT INTO seen_tokens (jti, until) VALUES (?, ?)"
               " ON CONFLICT (jti) DO UPDATE SET until = max(until, excluded.until)")


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
    # False: more than RANK_CANDIDATES matches: the newest RANK_CANDIDATES are ranked first,
    # the older ones after them (ranked among themselves).
    ranked_exactly: bool = True


class FacetIndex:
    """Each dataset's facet values (publisher, keywords, themes, formats), in memory.

    Counting facets over the best-ranked 2,000 matches from here costs ~1-2 ms; the same
    count in SQL (``terms`` joined to the ids) cost ~20 ms at 100,000 datasets. Values are
    shared tuples, ~15 MiB at that scale. Changed by the writer after its commit; read on the
    reader's thread (single dict lookups): an id deleted meanwhile is skipped.
    """

    def __init__(self) -> None:
        self._values: dict[int, tuple[tuple[str, str], ...]] = {}
        self._ids: dict[str, list[int]] = {}
        self._shared: dict[tuple[str, str], tuple[str, str]] = {}

    @classmethod
    def load(cls, c: sqlite3.Connection) -> FacetIndex:
        index = cls()
        terms: dict[int, list[tuple[str, str]]] = {}
        for dataset, kind, value in c.execute("SELECT dataset, kind, value FROM terms"):
            terms.setdefault(dataset, []).append((kind, value))
        by_publisher: dict[str, list[tuple[int, list[tuple[str, str]]]]] = {}
        for dataset, publisher in c.execute("SELECT id, publisher FROM datasets ORDER BY id"):
            by_publisher.setdefault(publisher, []).append((dataset, terms.get(dataset, [])))
        for publisher, datasets in by_publisher.items():
            index.replace(publisher, datasets)
        return index

    def replace(self, publisher: str, datasets: list[tuple[int, list[tuple[str, str]]]]
                ) -> None:
        """``publisher``'s datasets are now these (id, [(kind, value), ...]); [] deletes."""
        for old in self._ids.pop(publisher, []):
            self._values.pop(old, None)
        if not datasets:
            return
        shared = self._shared
        mark = shared.setdefault(("publisher", publisher), ("publisher", publisher))
        for dataset, values in datasets:
            self._values[dataset] = (mark, *(shared.setdefault(v, v) for v in values))
        self._ids[publisher] = [d for d, _ in datasets]

    def count(self, ids: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
        """The facets (top FACET_SIZE values per kind) of the datasets ``ids``."""
        counts = Counter(chain.from_iterable(filter(None, map(self._values.get, ids))))
        per_kind: dict[str, dict[str, int]] = {k: {} for k in ("publisher", *FACET_KINDS)}
        for (kind, value), n in counts.items():
            per_kind[kind][value] = n
        return {k: _top(v) for k, v in per_kind.items()}


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


class RegistryStore:
    def __init__(self, writer: SqliteThread, reader: SqliteThread) -> None:
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self.heads: dict[str, Head] = {}
        self.version = 0
        self._next_dataset = 1
        self._browse_facets: tuple[int, int, dict[str, list[dict[str, Any]]]] | None = None
        self._soonest = 0  # no head expires before this (a lower bound; 0: look)
        self.facet_index = FacetIndex()
        self._jtis: list[Statement] = []  # seen token ids not yet committed
        self._jti_flush: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path) -> RegistryStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = SqliteThread(path, "registry-writer", ["PRAGMA journal_mode=WAL",
                                              "PRAGMA synchronous=NORMAL"])
        await writer.open()
        await writer.run(_migrate)
        reader = SqliteThread(path, "registry-reader", ["PRAGMA query_only=ON", *_READER_PRAGMAS])
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
        self.facet_index = await self._writer.run(FacetIndex.load)
        self.version = max((h.version for h in self.heads.values()), default=0)
        self._next_dataset = int(last_id) + 1

    async def close(self) -> None:
        if self._jti_flush is not None:
            self._jti_flush.cancel()
        await self._flush_jtis()
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
            first = self._next_dataset
            await self._run(self._statements(snap, version, renewal=renewal))
            if not renewal:
                self.facet_index.replace(snap.publisher, [
                    (first + i, [*(("keyword", v) for v in m.keywords),
                                 *(("theme", v) for v in m.themes),
                                 *(("format", v) for v in m.formats)])
                    for i, m in enumerate(snap.datasets)])
            self.version = version
            self._soonest = min(self._soonest, snap.expires_at)
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
                rowid, snap.publisher, meta.id, meta.title, meta.description,
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
                    self.facet_index.replace(p, [])
            return len(gone)

    async def set_replication_cursor(self, peer: str, since: int) -> None:
        async with self._write_lock:
            await self._run([("INSERT OR REPLACE INTO replication (peer, since) VALUES (?, ?)",
                              (peer, since))])

    # -- seen token ids (service.store.SeenTokens) -------------------------------------------

    def record_jti(self, jti: str, until: int) -> None:
        """Queue a seen jti; it commits within JTI_FLUSH_S (write-behind, never waits).

        A crash loses at most the jtis of the last JTI_FLUSH_S: a token accepted then could be
        replayed once after the restart.
        """
        self._jtis.append((_RECORD_JTI, (jti, until)))
        if self._jti_flush is None:
            self._jti_flush = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(JTI_FLUSH_S)
        await self._flush_jtis()

    async def _flush_jtis(self) -> None:
        self._jti_flush = None
        rows, self._jtis = self._jtis, []
        if rows:
            async with self._write_lock:
                await self._run(rows)

    async def live_jtis(self, now: int) -> list[tuple[str, int]]:
        rows = await self._rows("SELECT jti, until FROM seen_tokens WHERE until >= ?"
                                " ORDER BY until", (now,))
        return [(str(r[0]), int(r[1])) for r in rows]

    async def purge_jtis(self, now: int) -> None:
        async with self._write_lock:
            await self._run([("DELETE FROM seen_tokens WHERE until < ?", (now,))])

    async def witness(self, participant: str, seq: int, head: str, received_at: float,
                      jws: str) -> None:
        """Keep a member's audit checkpoint as received (the first one for a seq stays)."""
        async with self._write_lock:
            await self._run([("INSERT INTO witnessed_checkpoints (participant, seq, head,"
                              " received_at, jws) VALUES (?, ?, ?, ?, ?)"
                              " ON CONFLICT DO NOTHING",
                              (participant, seq, head, received_at, jws))])

    # -- reads ------------------------------------------------------------------------------

    async def witnessed(self, participant: str) -> list[tuple[int, str, float, str]]:
        """(seq, head, received_at, jws) of the checkpoints ``participant`` sent, in order."""
        rows = await self._rows("SELECT seq, head, received_at, jws FROM witnessed_checkpoints"
                                " WHERE participant = ? ORDER BY seq", (participant,))
        return [(int(r[0]), str(r[1]), float(r[2]), str(r[3])) for r in rows]

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

    def _expired(self, now: int) -> list[str]:
        """Publishers whose entry expired but is not swept yet (usually none: no scan)."""
        if self._soonest > now:
            return []
        gone = [p for p, h in self.heads.items() if h.expires_at <= now]
        if not gone:
            self._soonest = min((h.expires_at for h in self.heads.values()), default=_NEVER)
        return gone

    async def search(self, query: SearchQuery, now: int) -> SearchResult:
        """One hop: the ranked ids (page and facet sample from one query), then facets."""
        expired = self._expired(now)
        limit = max(1, min(query.limit, MAX_PAGE))
        offset = max(0, query.offset)
        browse = query == SearchQuery(limit=query.limit, offset=query.offset)
        cached = self._browse_facets
        if browse and cached is not None and cached[0] == self.version and cached[1] > now:
            facets = cached[2]
            items = await self._reader.run(
                lambda c: _page(c, _browse_ids(c, expired, limit, offset)))
            return SearchResult(total=facets["_total"][0]["count"], items=items,
                                facets=_public(facets))
        version = self.version
        found = await self._reader.run(
            lambda c: _search(c, self.facet_index, query, expired, limit, offset,
                              everything=browse))
        if browse:
            # Valid until the next change or the earliest expiry, whichever comes first.
            soonest = min((h.expires_at for h in self.heads.values()), default=now + 60)
            self._browse_facets = (version, soonest, found.facets)
        return SearchResult(total=found.total, items=found.items, facets=_public(found.facets),
                            facets_exact=found.facets_exact, ranked_exactly=found.ranked_exactly)


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


@dataclass
class _Found:
    total: int
    items: list[dict[str, Any]]
    facets: dict[str, list[dict[str, Any]]]
    facets_exact: bool
    ranked_exactly: bool = True


def _public(facets: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {k: v for k, v in facets.items() if not k.startswith("_")}


_TEXT_IDS = "SELECT rowid AS id"
# The reader's page cache holds the FTS index and the ids' pages (~120 MiB of database at
# 100,000 datasets; the default cache is 2 MiB); mmap spares a copy per page read.
_READER_PRAGMAS = ("PRAGMA cache_size=-65536", "PRAGMA mmap_size=268435456",
                   "PRAGMA temp_store=MEMORY")


def _matching(query: SearchQuery, expired: list[str]) -> tuple[str, list[Any], bool]:
    """``SELECT id ...`` of the live datasets a query matches, its arguments, whether text.

    A text query reads the FTS5 index alone (no join); a publisher's ids are few, so FTS5
    looks them up (``rowid IN``); facet filters are large id sets, tested per match
    (``+rowid``: FTS5 would otherwise run the whole MATCH once per id). Without text, a facet
    filter reads its ``terms`` index range, already in id order. Expiry needs no join: the
    heads in memory name the publishers expired but not swept yet (usually none).
    """
    expression = fts_expression(query.text)
    kinds = [(k, getattr(query, k)) for k in FACET_KINDS if getattr(query, k)]
    where: list[str] = []
    args: list[Any] = []
    if expression:
        select, idcol = _TEXT_IDS + " FROM datasets_fts", "+rowid"
        where.append("datasets_fts MATCH ?")
        args.append(expression)
        if query.publisher:
            where.append("rowid IN (SELECT id FROM datasets WHERE publisher = ?)")
            args.append(query.publisher)
    elif kinds:
        select, idcol = "SELECT dataset AS id FROM terms", "dataset"
        where.append("kind = ? AND value = ?")
        args += kinds.pop(0)
        if query.publisher:
            where.append("dataset IN (SELECT id FROM datasets WHERE publisher = ?)")
            args.append(query.publisher)
    else:
        select, idcol = "SELECT id FROM datasets", "id"
        if query.publisher:
            where.append("publisher = ?")
            args.append(query.publisher)
    for kind, value in kinds:
        where.append(f"{idcol} IN (SELECT dataset FROM terms WHERE kind = ? AND value = ?)")
        args += [kind, value]
    if expired:
        where.append(f"{idcol} NOT IN (SELECT id FROM datasets WHERE publisher IN "
                     "(SELECT value FROM json_each(?)))")
        args.append(json.dumps(expired))
    return select + " WHERE " + (" AND ".join(where) or "1"), args, bool(expression)


def _ranked(c: sqlite3.Connection, select: str, args: list[Any], text: bool, page_end: int
            ) -> tuple[list[int], int, bool]:
    """Ids best first, the total, whether ranked exactly.

    The ids: all matches up to FACET_EXACT_LIMIT (exact facets), past it the best-ranked
    FACET_SAMPLE (sampled facets); in both cases at least as far as ``page_end``.

    No text: id order, nothing to rank. Text: bm25 (FTS5's ``rank``), ties by id. FTS5
    computes bm25 for every match it returns, whatever the LIMIT (~1.7 µs each: ~55 ms for a
    word in a third of 100,000 datasets), so one pass reads the newest RANK_CANDIDATES + 1
    matches with their rank (FTS5 walks ids downwards and stops there; ~9 ms), and Python
    sorts them. When there were more,
    only those newest RANK_CANDIDATES are ranked and they come first; the older matches
    follow, ranked among themselves, if a page reaches them. The total stays exact: a count
    walks the doclists without ranking (~1.5 ms for 36,000 matches).
    """
    def count() -> int:
        return int(c.execute(f"SELECT count(*) FROM ({select})", args).fetchone()[0])

    if not text:
        want = max(FACET_EXACT_LIMIT + 1, page_end)
        ids = [r[0] for r in c.execute(f"{select} ORDER BY id LIMIT ?", [*args, want])]
        return ids, len(ids) if len(ids) < want else count(), True
    scoring = "SELECT rank, rowid" + select.removeprefix(_TEXT_IDS)  # rank: bm25
    scored = c.execute(f"{scoring} ORDER BY rowid DESC LIMIT ?",
                       [*args, RANK_CANDIDATES + 1]).fetchall()
    if len(scored) <= RANK_CANDIDATES:
        scored.sort()  # (rank, id): best first, ties by id
        return [r[1] for r in scored], len(scored), True
    edge = scored.pop()[1]  # the newest match not ranked with the others
    scored.sort()
    ids = [r[1] for r in scored]
    if page_end > RANK_CANDIDATES:  # a deep page: the older matches, ranked among themselves
        ids += [r[0] for r in c.execute(
            f"{select} AND rowid <= ? ORDER BY rank, rowid LIMIT ?",
            [*args, edge, page_end - RANK_CANDIDATES])]
    return ids, count(), False


def _search(c: sqlite3.Connection, index: FacetIndex, query: SearchQuery, expired: list[str],
            limit: int, offset: int, *, everything: bool) -> _Found:
    """Total, page and facets of a query, on the reader's thread.

    The ids best first (``_ranked``) give the page (a slice) and the facets, counted in
    memory over every match up to FACET_EXACT_LIMIT, else over the best-ranked FACET_SAMPLE.
    ``everything`` (the unfiltered browse, cached by the caller): facets over every dataset.
    """
    select, args, text = _matching(query, expired)
    if everything:
        return _everything(c, select, args, expired, limit, offset)
    ids, total, ranked_exactly = _ranked(c, select, args, text, offset + limit)
    exact = total <= FACET_EXACT_LIMIT
    facets = index.count(ids if exact else ids[:FACET_SAMPLE])
    facets["_total"] = [{"value": "", "count": total}]
    if not exact:
        facets["_sampled"] = [{"value": "best-ranked", "count": FACET_SAMPLE}]
    return _Found(total, _page(c, ids[offset:offset + limit]), facets, exact, ranked_exactly)


def _everything(c: sqlite3.Connection, select: str, args: list[Any], expired: list[str],
                limit: int, offset: int) -> _Found:
    live, args = (f"IN ({select})", args) if expired else ("IS NOT NULL", [])
    terms = c.execute(f"SELECT kind, value, count(*) FROM terms WHERE dataset {live} "
                      "GROUP BY kind, value", args).fetchall()
    by_publisher = c.execute(f"SELECT publisher, count(*) FROM datasets WHERE id {live} "
                             "GROUP BY publisher", args).fetchall()
    facets = _facet_lists(by_publisher, terms)
    total = sum(int(n) for _, n in by_publisher)
    facets["_total"] = [{"value": "", "count": total}]
    return _Found(total, _page(c, _browse_ids(c, expired, limit, offset)), facets, True)


def _facet_lists(by_publisher: list[Any], terms: list[Any]
                 ) -> dict[str, list[dict[str, Any]]]:
    per_kind: dict[str, dict[str, int]] = {k: {} for k in FACET_KINDS}
    for kind, value, n in terms:
        per_kind[kind][value] = int(n)
    return {"publisher": _top({r[0]: int(r[1]) for r in by_publisher}),
            **{k: _top(v) for k, v in per_kind.items()}}


def _browse_ids(c: sqlite3.Connection, expired: list[str], limit: int, offset: int
                ) -> list[int]:
    select, args, _text = _matching(SearchQuery(), expired)
    return [r[0] for r in c.execute(f"{select} ORDER BY id LIMIT ? OFFSET ?",
                                    [*args, limit, offset])]


def _page(c: sqlite3.Connection, ids: list[int]) -> list[dict[str, Any]]:
    """The page's datasets, in the order of ``ids``."""
    if not ids:
        return []
    rows = {r[0]: r for r in c.execute(
        "SELECT d.id, d.publisher, d.dataset_id, d.title, d.description, d.keywords, d.themes, "
        "d.formats, e.endpoint FROM json_each(?) j JOIN datasets d ON d.id = j.value "
        "JOIN entries e ON e.publisher = d.publisher", (json.dumps(ids),))}
    return [{"participantId": r[1], "datasetId": r[2], "title": r[3], "description": r[4],
             "keywords": json.loads(r[5]), "themes": json.loads(r[6]),
             "formats": json.loads(r[7]), "endpoint": r[8]}
            for r in (rows.get(i) for i in ids) if r is not None]


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
