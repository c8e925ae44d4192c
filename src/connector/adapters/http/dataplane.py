"""The provider's data plane: HTTP pull of a dataset's records as JSON lines.

Every request presents the short-lived token from the TransferStart data address and is
re-authorised (state, expiry, the agreement's policy with the use counted) before a byte is
sent. Records stream in 64 KiB chunks, so memory stays flat whatever the file size.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from connector.core.errors import TransferDenied
from connector.service.transfers import TransferService

CHUNK = 64 * 1024
NDJSON = "application/x-ndjson"


def _jsonl_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _csv_chunks(path: Path) -> Iterator[bytes]:
    """CSV rows as JSON objects keyed by the header, one per line."""
    encoder = msgspec.json.Encoder()
    buf = bytearray()
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            buf += encoder.encode(row)
            buf += b"\n"
            if len(buf) >= CHUNK:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)


def record_chunks(source_type: str, path: Path) -> Iterator[bytes]:
    if source_type == "csv":
        return _csv_chunks(path)
    return _jsonl_chunks(path)


class DataPlane:
    def __init__(self, transfers: TransferService,
                 datasets: Callable[[], Mapping[str, Any]]) -> None:
        self._transfers = transfers
        self._datasets = datasets

    async def pull(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else None
        _, agreement = await self._transfers.authorize_pull(token)
        decl = self._datasets().get(agreement.dataset_id)
        if decl is None:
            raise TransferDenied(f"dataset {agreement.dataset_id!r} is no longer available")
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        chunks = record_chunks(decl.source_type, decl.source_path)
        while True:
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                break
            await response.write(chunk)  # back-pressure: waits while the socket is full
        await response.write_eof()
        return response

    def register(self, app: web.Application) -> None:
        app.router.add_get("/data", self.pull)

