"""The provider's data plane: HTTP pull of a dataset's records as JSON lines.

- ``GET /data[?offset=N]`` streams the records from record N on (resume after a cut);
- ``GET /data/summary`` gives the whole stream's record count, byte size and SHA-256, which
  the consumer checks its copy against before it completes the transfer;
- ``POST /data/token`` exchanges the token for a fresh one (idempotent, see
  ``TransferService.refresh_token``).

Every request presents the short-lived token from the TransferStart data address and is
re-authorised (state, expiry, revocation, the agreement's policy with the use counted) before
a byte is sent. Records stream in 64 KiB chunks with back-pressure (``write`` waits while the
socket is full), so memory stays flat whatever the size. Between chunks the transfer's state
is checked again: a termination or a revoked agreement cuts the stream.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from connector.core.errors import MalformedMessage, TransferDenied
from connector.service.transfers import TransferService

log = logging.getLogger("connector.dataplane")
# 1 MiB reads. A JSON-lines file is read on the event loop: from the page cache a 1 MiB read
# is ~0.1 ms, less than the GIL hand-off a thread hop costs (measured: bench/transfer.py).
# CSV rows are converted to JSON in a thread, where the work is.
CHUNK = 1024 * 1024
NDJSON = "application/x-ndjson"
# Summaries are cached per (file, size, mtime): computing one reads the whole source once.
_summaries: dict[tuple[str, int, int], dict[str, Any]] = {}


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
    encoder = msgspec.json.Encoder()
    buf = bytearray()
    with path.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if i < offset:
                continue
            buf += encoder.encode(row)
            buf += b"\n"
            if len(buf) >= CHUNK:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)


def record_chunks(source_type: str, path: Path, offset: int = 0) -> Iterator[bytes]:
    """The source's records as JSON-lines chunks, from record ``offset`` on."""
    if source_type == "csv":
        return _csv_chunks(path, offset)
    return _jsonl_chunks(path, offset)


def summarize(source_type: str, path: Path) -> dict[str, Any]:
    """Record count, byte size and SHA-256 of the full stream (cached per file version)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    cached = _summaries.get(key)
    if cached is None:
        digest, records, size = hashlib.sha256(), 0, 0
        for chunk in record_chunks(source_type, path):
            digest.update(chunk)
            records += chunk.count(b"\n")
            size += len(chunk)
        cached = _summaries[key] = {"records": records, "bytes": size,
                                    "sha256": digest.hexdigest()}
    return cached


def _offset(request: web.Request) -> int:
    raw = request.query.get("offset", "0")
    if not raw.isdigit():
        raise MalformedMessage(f"offset must be a non-negative integer, not {raw!r}")
    return int(raw)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:] if header[:7].lower() == "bearer " else (header or None)


class DataPlane:
    def __init__(self, transfers: TransferService,
                 datasets: Callable[[], Mapping[str, Any]]) -> None:
        self._transfers = transfers
        self._datasets = datasets

    async def _source(self, request: web.Request, *, use: bool = True) -> tuple[str, Any]:
        record, agreement = await self._transfers.authorize_pull(_bearer(request), use=use)
        decl = self._datasets().get(agreement.dataset_id)
        if decl is None:
            raise TransferDenied(f"dataset {agreement.dataset_id!r} is no longer available")
        return record.id, decl

    async def pull(self, request: web.Request) -> web.StreamResponse:
        offset = _offset(request)
        pid, decl = await self._source(request)
        response = web.StreamResponse(headers={"Content-Type": NDJSON,
                                               "X-Record-Offset": str(offset)})
        await response.prepare(request)
        chunks = record_chunks(decl.source_type, decl.source_path, offset)
        in_thread = decl.source_type != "jsonl"
        while True:
            chunk = await asyncio.to_thread(next, chunks, None) if in_thread else next(chunks, None)
            if chunk is None:
                break
            if not await self._transfers.still_streaming(pid):
                # Terminated or revoked mid-stream: cut the connection without a proper end,
                # so the consumer cannot mistake a partial copy for a complete one.
                log.info("transfer %s stopped during the stream: cutting it", pid)
                if request.transport is not None:
                    request.transport.close()
                return response
            try:
                await response.write(chunk)
            except ConnectionError:  # the consumer went away; it resumes by offset
                log.info("transfer %s: consumer disconnected at record offset %d+", pid, offset)
                return response
        await response.write_eof()
        return response

    async def summary(self, request: web.Request) -> web.Response:
        _, decl = await self._source(request, use=False)  # a summary is not a use
        doc = await asyncio.to_thread(summarize, decl.source_type, decl.source_path)
        return web.json_response(doc)

    async def refresh(self, request: web.Request) -> web.Response:
        """A new token for the same transfer (idempotent; the old one has a grace window)."""
        token, expires = await self._transfers.refresh_token(_bearer(request))
        return web.json_response({"token": token, "expiresAt": expires})

    def register(self, app: web.Application) -> None:
        app.router.add_post("/data/token", self.refresh)
        app.router.add_get("/data", self.pull)
        app.router.add_get("/data/summary", self.summary)
