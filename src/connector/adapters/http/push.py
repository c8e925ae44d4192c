"""HTTP push: the provider streams a transfer's records to an endpoint the consumer gave.

Consumer (``PushReceiver``): ``connector transfer AGREEMENT --push --out SINK`` makes the
daemon mint a one-time bearer token and send a TransferRequestMessage with format
``HttpData-PUSH`` and a data address ``https://<us>/push/<consumerPid>``. It then serves:

- ``POST /push/{pid}``: the records as one JSON-lines body (chunked), written into the sink
  and hashed as they arrive. ``Push-Offset: N`` says the first N records are already there (a
  resume): the sink keeps them and drops whatever followed;
- ``GET /push/{pid}``: ``{"records": N}``, the whole records held after a body was cut;
- ``POST /push/{pid}/summary``: ``{"records", "bytes", "sha256"}`` of what the provider sent;
  the consumer compares it with what it wrote (409 if they differ).

Only after that check passes does the consumer accept the provider's TransferCompletion
(``PushedCopies.completion_problem``, the guard ``TransferService`` is built with): a
completion before it is refused with a 400, so the provider's process terminates instead of
completing. We chose a second request for the
summary because aiohttp sends no HTTP trailers, and headers on the stream request would
have to be known before the first byte (the summary of an HTTP upstream is not).

Provider (``Pusher``): when a push transfer becomes STARTED (the Start carries no data
address, DSP 2025-1 §TP 2.3), it authorises the transfer as a pull is authorised (state,
revocation, the agreement's policy with the use counted), streams the source to the
endpoint, checking between chunks that the transfer is still STARTED (a revocation or a
termination cuts the stream), posts the summary, and completes. A stream cut by the network
resumes from the consumer's whole records (``GET``, then ``Push-Offset``), up to PUSH_ATTEMPTS
streams; any other failure terminates the transfer with the reason.

Both sides report each chunk to a ``ProgressBoard`` (``adapters/progress.py``): records, bytes
and rate, which the console shows while the push runs.

The token and the sink live in memory: a consumer restarted mid-push refuses the push (the
provider terminates), and the transfer is requested again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from aiohttp import web

from connector.adapters.http.client import PUSH_OFFSET, PeerClient
from connector.adapters.progress import PUSH_IN, PUSH_OUT, ProgressBoard
from connector.adapters.sinks import open_sink, parse_sink
from connector.adapters.sources import Source, open_source
from connector.core import transfer as tp
from connector.core.codec import within_depth
from connector.core.errors import AuthError, ConnectorError, MalformedMessage, NotFound, PeerError
from connector.core.messages import DataAddress
from connector.core.negotiation import Role
from connector.core.transfer import Transfer, TransferEvent, TransferState
from connector.service.audit import AuditTrail
from connector.service.consents import ConsentService, GatedSource
from connector.service.consumer import COPY_FIELDS, Copy, copy_mismatch
from connector.service.transfers import TransferService

log = logging.getLogger("connector.push")
# How long a push may wait for our record to reach STARTED (the Start may still be in flight).
START_WAIT_S = 10.0
# A push cut mid-way resumes where the consumer's whole records end, this many streams at most.
PUSH_ATTEMPTS = 4
RESUME_DELAY_S = 0.5


@dataclass
class _Expected:
    token_hash: str
    sink: str
    got: Copy | None = None  # what the last complete push body held
    verified: Copy | None = None  # ... once it matched the provider's summary
    held: int = 0  # whole records in the sink: where a push cut mid-way resumes


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PushedCopies:
    """Consumer side: the pushes we expect, one per transfer, and whether each copy checked
    out. ``completion_problem`` is the guard ``TransferService`` is built with."""

    def __init__(self) -> None:
        self.expected: dict[str, _Expected] = {}

    def completion_problem(self, record: Transfer) -> str | None:
        """Why a pushed transfer may not complete yet; None once its copy was verified."""
        expected = self.expected.get(record.id)
        if expected is None:
            return "no push is expected for this transfer here"
        if expected.verified is None:
            return "the pushed copy was not verified against the provider's summary"
        return None


class PushReceiver:
    """Consumer side: the endpoint a provider pushes to, one expectation per transfer."""

    def __init__(self, transfers: TransferService, public_url: str,
                 copies: PushedCopies, board: ProgressBoard) -> None:
        self._transfers = transfers
        self._public_url = public_url.rstrip("/")
        self._expected = copies.expected
        self._board = board

    def address_for(self, sink: str) -> Callable[[str], DataAddress]:
        """For ``TransferService.start``: mint the token and remember the sink for ``pid``."""
        parse_sink(sink)

        def address(pid: str) -> DataAddress:
            token = secrets.token_urlsafe(32)
            self._expected[pid] = _Expected(token_hash=_digest(token), sink=sink)
            return tp.push_address(f"{self._public_url}/push/{pid}", token)

        return address

    def result(self, pid: str) -> dict[str, Any]:
        expected = self._expected.get(pid)
        if expected is None or expected.verified is None:
            raise NotFound(f"no verified push for transfer {pid!r}")
        return expected.verified.as_dict()

    def _check(self, request: web.Request) -> tuple[str, _Expected]:
        pid = request.match_info["pid"]
        expected = self._expected.get(pid)
        header = request.headers.get("Authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else header
        if expected is None or not hmac.compare_digest(_digest(token), expected.token_hash):
            raise AuthError("unknown push endpoint or wrong token")
        return pid, expected

    async def receive(self, request: web.Request) -> web.Response:
        pid, expected = self._check(request)
        record = await self._transfers.until(
            pid, lambda r: r.state is not TransferState.REQUESTED, START_WAIT_S)
        if record.state is not TransferState.STARTED:
            raise MalformedMessage(f"transfer {pid} is {record.state.value}, not STARTED",
                                   area=None)
        try:
            offset = int(request.headers.get(PUSH_OFFSET, "0"))
        except ValueError:
            raise MalformedMessage(f"{PUSH_OFFSET} must be a record count", area=None) from None
        if not 0 <= offset <= expected.held:
            return web.json_response({"records": expected.held}, status=409)
        expected.got = expected.verified = None
        # The first ``offset`` records stay (re-hashed); whatever followed them goes.
        sink = await asyncio.to_thread(open_sink, expected.sink, offset)
        progress = self._board.begin(pid, PUSH_IN, records=offset, size=sink.size)
        try:
            async for block in request.content.iter_any():
                sink.write(block)
                progress.add(block)
        except Exception as exc:  # cut: the whole records received stay, for a resume
            await asyncio.to_thread(sink.close)
            expected.held = await asyncio.to_thread(lambda: sink.records)
            log.info("push %s cut after %d whole records: %s", pid, expected.held, exc)
            self._board.end(pid, f"cut after {expected.held} records")
            raise MalformedMessage(f"push body cut after {expected.held} records",
                                   area=None) from exc
        await asyncio.to_thread(sink.close)
        self._board.end(pid)
        expected.got = Copy(records=sink.records, bytes=sink.size, sha256=sink.sha256())
        expected.held = expected.got.records
        return web.json_response(expected.got.as_dict())

    async def offset(self, request: web.Request) -> web.Response:
        """``GET /push/{pid}``: the whole records held, where the provider resumes."""
        _, expected = self._check(request)
        return web.json_response({"records": expected.held})

    async def summary(self, request: web.Request) -> web.Response:
        pid, expected = self._check(request)
        try:
            claimed = msgspec.json.decode(within_depth(await request.read()),
                                          type=dict[str, Any])
        except ValueError as exc:  # msgspec.DecodeError is one; so is a body nested too deep
            raise MalformedMessage(f"summary is not a JSON object: {exc}", area=None) from exc
        claimed = {k: claimed.get(k) for k in COPY_FIELDS}
        received = expected.got.as_dict() if expected.got is not None else None
        if expected.got is None or copy_mismatch(expected.got, claimed) is not None:
            await self._transfers.note(pid, "consumer", "push copy does not match",
                                       f"received {received}, provider says {claimed}")
            return web.json_response({"received": received, "summary": claimed}, status=409)
        expected.verified = expected.got
        await self._transfers.note(pid, "consumer", "push copy verified",
                                   f"{claimed['records']} records sha256 {claimed['sha256']}")
        return web.json_response(claimed)

    def register(self, app: web.Application) -> None:
        app.router.add_post("/push/{pid}", self.receive)
        app.router.add_get("/push/{pid}", self.offset)
        app.router.add_post("/push/{pid}/summary", self.summary)


class _Stopped(Exception):
    """The transfer stopped being STARTED during the push."""


class PushClaims(Protocol):
    """Replicas: at most one runs a push (``PostgresStore.push_claims``)."""

    async def claim(self, pid: str) -> bool: ...

    async def release(self, pid: str) -> None: ...


class Pusher:
    """Provider side: runs each push transfer once it is STARTED."""

    def __init__(self, transfers: TransferService, client: PeerClient,
                 datasets: Callable[[], Mapping[str, Any]], board: ProgressBoard, *,
                 trail: AuditTrail | None = None, consents: ConsentService | None = None,
                 claims: PushClaims | None = None) -> None:
        self._transfers = transfers
        self._board = board
        self._client = client
        self._datasets = datasets
        self._trail = trail  # an audit entry before the push and one after it (None: off)
        self._consents = consents  # the register a `consent` constraint filters by
        self._claims = claims  # replicas: which one runs each push (None: this daemon alone)
        self._running: dict[str, asyncio.Task[None]] = {}
        transfers.listeners.append(self.on_change)

    def on_change(self, record: Transfer, new: bool) -> None:
        if (record.role is Role.PROVIDER and record.format == tp.PUSH_FORMAT
                and record.state is TransferState.STARTED):
            self._start(record.id, resumed=False)

    def resume(self, pid: str) -> None:
        """Replicas: carry on a STARTED push no live replica runs (its replica died), from
        the records the consumer holds; nothing happens if one runs it."""
        self._start(pid, resumed=True)

    def _start(self, pid: str, *, resumed: bool) -> None:
        if pid not in self._running:
            task = asyncio.get_running_loop().create_task(self._claimed(pid, resumed))
            self._running[pid] = task
            task.add_done_callback(lambda _: self._running.pop(pid, None))

    async def _claimed(self, pid: str, resumed: bool) -> None:
        if self._claims is None:
            await self._run(pid, resumed)
            return
        if not await self._claims.claim(pid):
            return  # another replica runs it
        try:
            if resumed and not await self._transfers.still_streaming(pid):
                return  # it ended since it was found STARTED
            await self._run(pid, resumed)
        finally:
            await self._claims.release(pid)

    async def _chunks(self, pid: str, chunks: AsyncGenerator[bytes, None], offset: int
                      ) -> AsyncGenerator[bytes, None]:
        progress = self._board.begin(pid, PUSH_OUT, records=offset)
        async with aclosing(chunks):
            async for chunk in chunks:
                if not await self._transfers.still_streaming(pid):
                    raise _Stopped
                yield chunk
                progress.add(chunk)

    async def _push(self, pid: str, url: str, auth: str, source: Source | GatedSource,
                    offset: int) -> None:
        """Stream the source from record ``offset``; after a cut, ask the consumer what it
        holds and go on from there (up to PUSH_ATTEMPTS streams). A refusal (4xx) or a
        stopped transfer is not retried."""
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            try:
                chunks = self._chunks(pid, source.chunks(offset), offset)
                await self._client.push(url, auth, chunks, offset=offset)
                return
            except PeerError as exc:
                if (not exc.retryable or attempt == PUSH_ATTEMPTS
                        or not await self._transfers.still_streaming(pid)):
                    raise
                log.info("push %s cut (%s); resuming, attempt %d", pid, exc.message,
                         attempt + 1)
            await asyncio.sleep(RESUME_DELAY_S * attempt)
            offset = await self._client.push_offset(url, auth)
            await self._transfers.note(pid, "provider", "push resumed",
                                       f"from record {offset} (attempt {attempt + 1})")

    async def _run(self, pid: str, resumed: bool) -> None:
        try:
            await self._pushed(pid, resumed)
        finally:
            self._board.end(pid)

    async def _pushed(self, pid: str, resumed: bool) -> None:
        try:
            record, agreement = await self._transfers.authorize_push(pid, count_use=not resumed)
            decl = self._datasets().get(agreement.dataset_id)
            address = record.data_address
            url = address.url() if address is not None else None
            if decl is None or address is None or not url:
                raise NotFound("dataset gone or no push address")
            source: Source | GatedSource = open_source(decl)
            if self._consents is not None:
                source = self._consents.governed(decl, agreement, source)
            summary = await source.summary()
            auth = address.authorization_header()
            offset = await self._client.push_offset(url, auth) if resumed else 0
            if resumed:
                await self._transfers.note(pid, "provider", "push resumed",
                                           f"by another replica, from record {offset}")
            if self._trail is not None:  # refused (the push does not start) if unrecorded
                await self._trail.data_access(agreement=agreement.id, transfer=pid,
                                              offset=offset, records=0, size=0, complete=None)
            await self._push(pid, url, auth, source, offset)
            if isinstance(source, GatedSource) and source.last is not None:
                await self._transfers.note(pid, "consent", "records withheld",
                                           source.last.account())
            if not await self._transfers.still_streaming(pid):
                raise _Stopped
            await self._client.push_summary(url, auth, summary)
            if self._trail is not None:
                await self._trail.data_access(
                    agreement=agreement.id, transfer=pid, offset=0,
                    records=int(summary["records"]), size=int(summary["bytes"]), complete=True)
            await self._transfers.act(pid, TransferEvent.COMPLETE)
            log.info("push %s done: %s records", pid, summary["records"])
        except _Stopped:
            log.info("push %s stopped mid-stream: the transfer is no longer STARTED", pid)
        except (ConnectorError, OSError) as exc:
            if isinstance(exc, PeerError) and not await self._transfers.still_streaming(pid):
                log.info("push %s cut: the transfer ended during it", pid)
                return
            message = exc.message if isinstance(exc, ConnectorError) else str(exc)
            log.warning("push %s failed: %s", pid, message)
            record = await self._transfers.mine(pid)
            if not record.state.terminal:
                await self._transfers.act(pid, TransferEvent.TERMINATE,
                                          f"push failed: {message}", code="push-failed")

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
