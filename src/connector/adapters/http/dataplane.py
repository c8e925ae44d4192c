"""The provider's data plane: HTTP pull of a dataset's records as JSON lines.

- ``GET /data[?offset=N]`` streams the records from record N on (resume after a cut);
- ``GET /data/summary`` gives the whole stream's record count, byte size and SHA-256, which
  the consumer checks its copy against before it completes the transfer;
- ``POST /data/token`` exchanges the token for a fresh one (idempotent, see
  ``TransferService.refresh_token``).

Every request presents the short-lived token from the TransferStart data address and is
re-authorised (state, expiry, revocation, the agreement's policy with the use counted) before
a byte is sent. Records come from ``adapters.sources`` (files, SQLite, an HTTP upstream) and
stream in chunks with back-pressure (``write`` waits while the socket is full), so memory
stays flat whatever the size. Between chunks the transfer's state
is checked again: a termination or a revoked agreement cuts the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from connector.adapters.sources import (  # noqa: F401 (record_chunks, summarize: re-exported)
    missing_source,
    open_source,
    record_chunks,
    summarize,
)
from connector.core.consent import RecordGate
from connector.core.errors import ConnectorError, InvalidParameter, TransferDenied
from connector.service.audit import AuditTrail
from connector.service.consents import ConsentService
from connector.service.transfers import TransferService, withdrawn

log = logging.getLogger("connector.dataplane")
NDJSON = "application/x-ndjson"


def _offset(request: web.Request) -> int:
    raw = request.query.get("offset", "0")
    if not (raw.isascii() and raw.isdigit()):  # "²".isdigit() is true, int("²") fails
        raise InvalidParameter(f"offset must be a non-negative integer, not {raw!r}")
    return int(raw)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:] if header[:7].lower() == "bearer " else (header or None)


class _Sent:
    """What one pull response carried: records (whole JSON lines) and bytes."""

    __slots__ = ("bytes", "complete", "records")

    def __init__(self) -> None:
        self.records = 0
        self.bytes = 0
        self.complete = False

    def add(self, chunk: bytes) -> None:
        self.records += chunk.count(b"\n")
        self.bytes += len(chunk)


class DataPlane:
    def __init__(self, transfers: TransferService,
                 datasets: Callable[[], Mapping[str, Any]], *,
                 on_served: Callable[[bytes], None] | None = None,
                 trail: AuditTrail | None = None,
                 consents: ConsentService | None = None,
                 on_withheld: Callable[[Mapping[str, int]], None] | None = None) -> None:
        self._transfers = transfers
        self._datasets = datasets
        self._on_served = on_served  # each chunk of records written (metrics)
        self._trail = trail  # one audit entry before a stream and one after it (None: off)
        self._consents = consents  # the register a `consent` constraint filters by
        self._on_withheld = on_withheld  # a stream's withheld records by reason (metrics)

    async def _source(self, request: web.Request, *, use: bool = True
                      ) -> tuple[str, Any, Any]:
        """(transfer id, agreement, dataset declaration) a request's token opens."""
        record, agreement = await self._transfers.authorize_pull(_bearer(request), use=use)
        decl = self._datasets().get(agreement.dataset_id)
        if decl is None:
            raise TransferDenied(withdrawn(agreement.dataset_id))
        missing = missing_source(decl.source_type, decl.source_path)
        if missing is not None:
            raise TransferDenied(withdrawn(agreement.dataset_id, missing))
        return record.id, agreement, decl

    def _gate(self, decl: Any, agreement: Any, offset: int) -> RecordGate | None:
        """The consent gate of a pull (None: the agreement's policy has no ``consent``)."""
        if self._consents is None:
            return None
        return self._consents.gate(decl, agreement, skip=offset)

    async def pull(self, request: web.Request) -> web.StreamResponse:
        offset = _offset(request)
        pid, granted, decl = await self._source(request)
        agreement = granted.id
        gate = self._gate(decl, granted, offset)
        sent = _Sent()
        await self._audit(agreement, pid, offset, sent, complete=None)  # refused if unrecorded
        try:
            return await self._stream(request, pid, offset, decl, sent, gate)
        finally:
            if gate is not None:  # counts by reason class only: `connector why`, metrics
                if self._on_withheld is not None:
                    self._on_withheld(gate.counts())
                await self._transfers.note(pid, "consent", "records withheld", gate.account())
            try:
                await self._audit(agreement, pid, offset, sent, complete=sent.complete)
            except ConnectorError as exc:  # the bytes are gone: say so, loudly
                log.error("transfer %s: the stream's audit entry could not be written: %s",
                          pid, exc.message)

    async def _audit(self, agreement: str, pid: str, offset: int, sent: _Sent,
                     complete: bool | None) -> None:
        if self._trail is not None:
            await self._trail.data_access(agreement=agreement, transfer=pid, offset=offset,
                                          records=sent.records, size=sent.bytes,
                                          complete=complete)

    async def _stream(self, request: web.Request, pid: str, offset: int, decl: Any,
                      sent: _Sent, gate: RecordGate | None) -> web.StreamResponse:
        # Under consent, offsets count records served: the gate skips them, not the source.
        chunks = open_source(decl).chunks(0 if gate is not None else offset)
        try:
            # The first chunk before the headers: an upstream that fails fails with a status.
            first = await anext(chunks, None)
            response = web.StreamResponse(headers={"Content-Type": NDJSON,
                                                   "X-Record-Offset": str(offset)})
            await response.prepare(request)
            chunk = first
            while chunk is not None:
                if not await self._transfers.still_streaming(pid):
                    # Terminated or revoked mid-stream: cut the connection without a proper
                    # end, so the consumer cannot mistake a partial copy for a complete one.
                    log.info("transfer %s stopped during the stream: cutting it", pid)
                    if request.transport is not None:
                        request.transport.close()
                    return response
                if gate is not None and self._consents is not None:
                    # Decided now, with nothing awaited before the write: a withdrawal
                    # acknowledged before this line holds for every record of this chunk.
                    chunk = self._consents.take(gate, chunk)
                try:
                    await response.write(chunk)
                    sent.add(chunk)
                except ConnectionError:  # the consumer went away; it resumes by offset
                    log.info("transfer %s: consumer disconnected at record offset %d+", pid,
                             offset)
                    return response
                if self._on_served is not None:
                    self._on_served(chunk)
                chunk = await anext(chunks, None)
        finally:
            await chunks.aclose()
        if gate is not None and self._consents is not None:
            last = self._consents.finish(gate)
            await response.write(last)
            sent.add(last)
        await response.write_eof()
        sent.complete = True
        return response

    async def summary(self, request: web.Request) -> web.Response:
        _, agreement, decl = await self._source(request, use=False)  # a summary is not a use
        gate = self._gate(decl, agreement, 0)
        if gate is not None and self._consents is not None:
            chunks = open_source(decl).chunks(0)
            return web.json_response(await self._consents.summary(chunks, gate))
        return web.json_response(await open_source(decl).summary())

    async def refresh(self, request: web.Request) -> web.Response:
        """A new token for the same transfer (idempotent; the old one has a grace window)."""
        token, expires = await self._transfers.refresh_token(_bearer(request))
        return web.json_response({"token": token, "expiresAt": expires})

    def register(self, app: web.Application) -> None:
        app.router.add_post("/data/token", self.refresh)
        app.router.add_get("/data", self.pull)
        app.router.add_get("/data/summary", self.summary)
