"""Where a dataset's records come from: files (JSON lines, CSV), an SQLite or PostgreSQL
query, an HTTP upstream. Every source gives the same two things:

- ``chunks(offset)``: the records as JSON-lines byte chunks (each record one JSON object and a
  newline), from record ``offset`` on (the records before it are skipped, which is how a cut
  pull resumes);
- ``summary()``: record count, byte size and SHA-256 of the whole stream from record 0, which
  is exactly what ``chunks(0)`` yields (the consumer checks its copy against it).

Conversions: a CSV row becomes an object keyed by the header (values are strings); an SQLite
row an object keyed by column name (blobs as base64); a PostgreSQL row too, its values made
JSON (numeric as a string, timestamps and dates in ISO 8601, bytea as base64, uuid as a
string, json and jsonb as the JSON they hold). A JSON-lines source is sent as is, with
a final newline added if the file lacks one.

Credentials are never in the declaration: an HTTP upstream's bearer token is read from the
secret file the declaration names, at each request (so a rotated token is picked up); a
PostgreSQL source's DSN likewise, at each connection.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import csv
import datetime
import decimal
import hashlib
import io
import sqlite3
import uuid
from collections.abc import AsyncGenerator, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import asyncpg
import msgspec

from connector import keys
from connector.core.errors import ConfigError, PeerError

Chunks = AsyncGenerator[bytes, None]

# 1 MiB reads. A JSON-lines file is read on the event loop: from the page cache a 1 MiB read
# is ~0.1 ms, less than the GIL hand-off a thread hop costs (measured: bench/transfer.py).
# CSV rows and SQLite rows are converted to JSON in a thread, where the work is.
CHUNK = 1024 * 1024
# Summaries of file-backed sources are cached per (file, size, mtime[, query]): computing one
# reads the whole source once. An HTTP upstream is summarised afresh each time.
_summaries: dict[tuple[Any, ...], dict[str, Any]] = {}
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)


class SourceDecl(Protocol):
    """What a dataset declaration (``participant.datasets.DatasetDecl``) says about its source."""

    source_type: str
    source_path: Path | None
    source_query: str
    source_url: str
    source_format: str
    source_token_file: Path | None
    source_dsn_file: Path | None


class Source(Protocol):
    def chunks(self, offset: int = 0) -> Chunks: ...

    async def summary(self) -> dict[str, Any]: ...


# --- files -----------------------------------------------------------------------------------


def _jsonl_chunks(path: Path, offset: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        for _ in range(offset):  # skip whole records
            if not f.readline():
                return
        last = b"\n"
        while chunk := f.read(CHUNK):
            last = chunk
            yield chunk
        if not last.endswith(b"\n"):
            yield b"\n"  # every record ends with a newline, the last one too


def _csv_chunks(path: Path, offset: int) -> Iterator[bytes]:
    """CSV rows as JSON objects keyed by the header, one per line."""
    with path.open(newline="", encoding="utf-8") as f:
        yield from _batched(csv.DictReader(f), offset)


def _batched(rows: Iterator[Any], offset: int) -> Iterator[bytes]:
    """Rows (mappings) as JSON lines in ~CHUNK blocks, skipping the first ``offset``."""
    encoder = msgspec.json.Encoder()
    buf = bytearray()
    for i, row in enumerate(rows):
        if i < offset:
            continue
        encoder.encode_into(row, buf, -1)
        buf += b"\n"
        if len(buf) >= CHUNK:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def record_chunks(source_type: str, path: Path, offset: int = 0) -> Iterator[bytes]:
    """A file source's records as JSON-lines chunks, from record ``offset`` on."""
    if source_type == "csv":
        return _csv_chunks(path, offset)
    return _jsonl_chunks(path, offset)


def _count(chunks: Iterator[bytes]) -> dict[str, Any]:
    digest, records, size = hashlib.sha256(), 0, 0
    for chunk in chunks:
        digest.update(chunk)
        records += chunk.count(b"\n")
        size += len(chunk)
    return {"records": records, "bytes": size, "sha256": digest.hexdigest()}


def summarize(source_type: str, path: Path) -> dict[str, Any]:
    """Record count, byte size and SHA-256 of a file source's full stream (cached)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    cached = _summaries.get(key)
    if cached is None:
        cached = _summaries[key] = _count(record_chunks(source_type, path))
    return cached


async def _count_stream(chunks: Chunks) -> dict[str, Any]:
    """``_count`` of a stream read once (sources with nothing to cache a summary by)."""
    digest, records, size = hashlib.sha256(), 0, 0
    async for chunk in chunks:
        digest.update(chunk)
        records += chunk.count(b"\n")
        size += len(chunk)
    return {"records": records, "bytes": size, "sha256": digest.hexdigest()}


async def _from_thread(chunks: Iterator[bytes], in_thread: bool) -> Chunks:
    try:
        while True:
            chunk = (await asyncio.to_thread(next, chunks, None) if in_thread
                     else next(chunks, None))
            if chunk is None:
                return
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


class FileSource:
    def __init__(self, source_type: str, path: Path) -> None:
        self.source_type, self.path = source_type, path

    def chunks(self, offset: int = 0) -> Chunks:
        return _from_thread(record_chunks(self.source_type, self.path, offset),
                            self.source_type != "jsonl")

    async def summary(self) -> dict[str, Any]:
        return await asyncio.to_thread(summarize, self.source_type, self.path)


# --- SQLite ------------------------------------------------------------------------------------


def _sqlite_rows(path: Path, query: str) -> Iterator[dict[str, Any]]:
    """The query's rows as dicts, on a read-only connection (the query cannot write)."""
    con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    try:
        cursor = con.execute(query.strip().rstrip(";"))
        names = [d[0] for d in cursor.description or ()]
        while rows := cursor.fetchmany(1000):
            for row in rows:
                yield dict(zip(names, row, strict=True))
    except sqlite3.Error as exc:
        raise ConfigError(f"sqlite source {path}: {exc}") from exc
    finally:
        con.close()


class SqliteSource:
    def __init__(self, path: Path, query: str) -> None:
        self.path, self.query = path, query

    def _chunks(self, offset: int) -> Iterator[bytes]:
        # Skipped in Python, not with OFFSET: the same query gives the same order, so record
        # N of a resume is record N of the pull from 0 (an OFFSET on a wrapped query need not).
        return _batched(_sqlite_rows(self.path, self.query), offset)

    def chunks(self, offset: int = 0) -> Chunks:
        return _from_thread(self._chunks(offset), True)

    def _version(self) -> tuple[Any, ...]:
        """The database file and its write-ahead log: a change to either is a new version."""
        parts: list[Any] = [str(self.path), self.query]
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            if p.exists():
                st = p.stat()
                parts += [st.st_size, st.st_mtime_ns]
        return tuple(parts)

    def _summary(self) -> dict[str, Any]:
        key = self._version()
        cached = _summaries.get(key)
        if cached is None:
            cached = _summaries[key] = _count(self._chunks(0))
        return cached

    async def summary(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._summary)


# --- PostgreSQL --------------------------------------------------------------------------------

# Rows fetched per round trip from the server-side cursor.
PG_PREFETCH = 1000


def _pg_value(value: Any) -> Any:
    """A PostgreSQL value as JSON can hold it; types msgspec has no rule for become strings."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)  # as the server wrote it: no rounding through a float
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, tuple)):  # arrays and composite types
        return [_pg_value(v) for v in value]
    if isinstance(value, dict):  # json and jsonb, decoded
        return value
    return str(value)  # interval, inet, cidr, macaddr, ranges, geometric types, ...


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def pg_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A PostgreSQL row (``asyncpg.Record`` or any mapping) as a JSON object by column name."""
    return {name: _pg_value(value) for name, value in row.items()}


class PostgresSource:
    """The rows of a SELECT on a PostgreSQL server, read through a server-side cursor inside a
    read-only transaction. The DSN (a libpq key/value string or a postgresql:// URL) is read
    from a 0600 secret file at each connection, so a rotated password is picked up."""

    def __init__(self, dsn_file: Path, query: str) -> None:
        self.dsn_file, self.query = dsn_file, query.strip().rstrip(";")

    def _dsn(self) -> str:
        keys.check_private_mode(self.dsn_file)
        try:
            return self.dsn_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"dsn_file {self.dsn_file}: cannot read: {exc}") from exc

    async def _rows(self) -> AsyncGenerator[Mapping[str, Any], None]:
        dsn = self._dsn()
        # Messages name the DSN file, never the DSN: it may hold a password.
        try:
            conn = await asyncpg.connect(dsn)
        except ValueError as exc:  # the text may quote the DSN
            raise ConfigError(f"dsn_file {self.dsn_file}: not a valid DSN") from exc
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise PeerError(f"postgres source ({self.dsn_file}): cannot connect: "
                            f"{type(exc).__name__}: {exc}") from exc
        try:
            for kind in ("json", "jsonb"):  # embedded as JSON, not as a string of JSON
                await conn.set_type_codec(kind, schema="pg_catalog", encoder=_json_text,
                                          decoder=msgspec.json.decode)
            # One snapshot for the whole stream, and the query cannot write.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                async for row in conn.cursor(self.query, prefetch=PG_PREFETCH):
                    yield row
        except asyncpg.PostgresError as exc:
            raise ConfigError(f"postgres source ({self.dsn_file}): {type(exc).__name__}: "
                              f"{exc}") from exc
        except (OSError, asyncpg.InterfaceError) as exc:
            raise PeerError(f"postgres source ({self.dsn_file}): {type(exc).__name__}: "
                            f"{exc}") from exc
        finally:
            await conn.close()

    async def chunks(self, offset: int = 0) -> Chunks:
        # Skipped here, not with OFFSET, as the SQLite source does: record N of a resume is
        # record N of the pull from 0 (the query should ORDER BY for a stable order).
        encoder = msgspec.json.Encoder()
        buf = bytearray()
        index = 0
        rows = self._rows()
        try:
            async for row in rows:
                if index >= offset:
                    encoder.encode_into(pg_record(row), buf, -1)
                    buf += b"\n"
                    if len(buf) >= CHUNK:
                        yield bytes(buf)
                        buf.clear()
                index += 1
        finally:
            await rows.aclose()
        if buf:
            yield bytes(buf)

    async def summary(self) -> dict[str, Any]:
        # Not cached: the database changes without a file to stat. One pass over the rows.
        return await _count_stream(self.chunks(0))


# --- HTTP upstream ---------------------------------------------------------------------------


def _complete_csv_end(text: str) -> int:
    """Where the last complete CSV record of ``text`` ends: after a newline outside quotes
    (a doubled quote inside a field keeps the count even)."""
    end, pos, inside = 0, 0, False
    for line in text.splitlines(keepends=True):
        pos += len(line)
        if line.count('"') % 2:
            inside = not inside
        if not inside and line.endswith("\n"):
            end = pos
    return end


async def _skip_jsonl(blocks: Chunks, offset: int) -> Chunks:
    """JSON lines as they arrive, the first ``offset`` records dropped, ending in a newline."""
    skip, last = offset, b"\n"
    async for block in blocks:
        while skip and block:
            i = block.find(b"\n")
            if i < 0:
                block = b""  # the record being skipped goes on in the next block
            else:
                block, skip = block[i + 1:], skip - 1
        if block:
            last = block
            yield block
    if not last.endswith(b"\n"):
        yield b"\n"


async def _csv_records(blocks: Chunks, offset: int) -> Chunks:
    """CSV as it arrives -> JSON lines keyed by the header, as the file source does."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    header: list[str] | None = None
    pending, index = "", 0
    encoder = msgspec.json.Encoder()

    def convert(text: str) -> bytes:
        nonlocal header, index
        reader = csv.DictReader(io.StringIO(text, newline=""), fieldnames=header)
        out = bytearray()
        for row in reader:
            if index >= offset:
                encoder.encode_into(row, out, -1)
                out += b"\n"
            index += 1
        if header is None and reader.fieldnames is not None:
            header = list(reader.fieldnames)
        return bytes(out)

    async for block in blocks:
        text = pending + decoder.decode(block)
        end = _complete_csv_end(text)
        pending = text[end:]
        if end and (chunk := convert(text[:end])):
            yield chunk
    rest = pending + decoder.decode(b"", final=True)
    if rest and (chunk := convert(rest)):
        yield chunk


class HttpSource:
    """An upstream serving JSON lines or CSV over HTTP(S), read as it streams."""

    def __init__(self, url: str, format: str, token_file: Path | None) -> None:
        self.url, self.format, self.token_file = url, format, token_file

    def _headers(self) -> dict[str, str]:
        if self.token_file is None:
            return {}
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"token_file {self.token_file}: cannot read: {exc.strerror}"
                              ) from exc
        return {"Authorization": f"Bearer {token}"}

    async def _blocks(self) -> Chunks:
        headers = self._headers()
        try:
            async with aiohttp.ClientSession(timeout=UPSTREAM_TIMEOUT) as session, \
                    session.get(self.url, headers=headers) as resp:
                if resp.status != 200:
                    raise PeerError(f"upstream {self.url} answered {resp.status}",
                                    peer_status=resp.status)
                async for block in resp.content.iter_any():
                    yield block
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError(f"upstream {self.url}: {type(exc).__name__}: {exc}") from exc

    def chunks(self, offset: int = 0) -> Chunks:
        if self.format == "csv":
            return _csv_records(self._blocks(), offset)
        return _skip_jsonl(self._blocks(), offset)

    async def summary(self) -> dict[str, Any]:
        return await _count_stream(self.chunks(0))


def missing_source(source_type: str, path: Path | None) -> str | None:
    """Why a file-backed source (jsonl, csv, sqlite) cannot be read, or None: such a dataset
    is not offered, and a pull under an earlier agreement is refused for good."""
    if source_type in ("jsonl", "csv", "sqlite") and path is not None and not path.is_file():
        return f"its source file {path.name} is missing"
    return None


def open_source(decl: SourceDecl) -> Source:
    """The reader for a dataset declaration's ``[source]``."""
    if decl.source_type == "http":
        return HttpSource(decl.source_url, decl.source_format, decl.source_token_file)
    if decl.source_type == "postgres":
        if decl.source_dsn_file is None:
            raise ConfigError("a postgres source needs a dsn_file")
        return PostgresSource(decl.source_dsn_file, decl.source_query)
    if decl.source_path is None:
        raise ConfigError(f"a {decl.source_type} source needs a path")
    if decl.source_type == "sqlite":
        return SqliteSource(decl.source_path, decl.source_query)
    return FileSource(decl.source_type, decl.source_path)
