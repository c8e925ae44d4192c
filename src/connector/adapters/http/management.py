"""The management API: loopback only, behind the token kept in ``keys/management.token``.

What the ``connector`` consumer commands call: read a provider's catalogue, negotiate, open
a transfer and pull its records, list what this participant holds.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any

import msgspec
from aiohttp import web

from connector.adapters.http.client import PeerClient
from connector.adapters.sinks import Sink, open_sink, parse_sink
from connector.core.binding import DSP_PATH
from connector.core.errors import AuthError, MalformedMessage, NotFound, PeerError
from connector.core.transfer import TransferEvent, TransferState
from connector.service.negotiations import NegotiationService
from connector.service.store import Store
from connector.service.transfers import TransferService

log = logging.getLogger("connector.management")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Long polls end after this many seconds at most, whatever the client asks.
MAX_WAIT_S = 120.0
# A negotiation reuses a provider's catalogue fetched this recently (the provider re-checks
# its policy on the request anyway); `connector catalog` always fetches afresh.
CATALOG_REUSE_S = 30.0


def _out(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(value),
                        content_type="application/json")


def _wait(request: web.Request) -> float:
    try:
        return min(MAX_WAIT_S, max(0.0, float(request.query.get("wait", "0"))))
    except ValueError:
        return 0.0


def root_of(url: str) -> str:
    """A provider's root URL, whether given as root or as its DSP base."""
    url = url.rstrip("/")
    return url[: -len(DSP_PATH)] if url.endswith(DSP_PATH) else url


class ManagementApi:
    def __init__(self, *, token: str, store: Store, negotiations: NegotiationService,
                 transfers: TransferService, client: PeerClient,
                 peers: Callable[[], Mapping[str, Any]], push: Any = None) -> None:
        self._push = push  # a PushReceiver (adapters/http/push.py), where pushes land
        self._token = token
        self._store = store
        self._negotiations = negotiations
        self._transfers = transfers
        self._client = client
        self._peers = peers
        self._catalogs: dict[str, tuple[float, dict[str, Any]]] = {}

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {self._token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise AuthError("management token missing or wrong")
        return await handler(request)

    def _provider(self, url: str) -> tuple[str, str]:
        """(DSP base, participant id) of a pinned peer given its root URL or DSP base."""
        given = url.rstrip("/")
        for peer in self._peers().values():
            base = peer.dsp_base or root_of(peer.url) + DSP_PATH
            if given in (base, root_of(peer.url)) or root_of(given) == root_of(peer.url):
                return base, peer.did
        raise NotFound(f"no pinned peer with URL {given!r}: add it with `connector trust add`")

    async def _fetch_catalog(self, base: str, did: str, *, reuse: bool) -> dict[str, Any]:
        now = time.monotonic()
        cached = self._catalogs.get(base)
        if reuse and cached is not None and now - cached[0] < CATALOG_REUSE_S:
            return cached[1]
        doc = await self._client.catalog(base, did)
        self._catalogs[base] = (now, doc)
        return doc

    async def catalog(self, request: web.Request) -> web.Response:
        base, did = self._provider(request.query.get("provider", ""))
        return _out(await self._fetch_catalog(base, did, reuse=False))

    async def negotiate(self, request: web.Request) -> web.Response:
        body = await _body(request)
        base, did = self._provider(str(body.get("provider", "")))
        dataset_id = str(body.get("datasetId", ""))
        catalog = await self._fetch_catalog(base, did, reuse=True)
        offer = _pick_offer(catalog, dataset_id, body.get("offerId"))
        record = await self._negotiations.start(provider_base=base, provider_id=did,
                                                dataset_id=dataset_id, offer=offer)
        wait = _wait(request)
        if wait:
            record = await self._negotiations.wait(record.id, wait)
        return _out(_negotiation_view(record), 201)

    async def offer(self, request: web.Request) -> web.Response:
        """Provider-initiated negotiation: offer a dataset to a pinned consumer."""
        body = await _body(request)
        base, did = self._provider(str(body.get("consumer", "")))
        record = await self._negotiations.offer(
            consumer_base=base, consumer_id=did, dataset_id=str(body.get("datasetId", "")),
            send=self._client.send_initial)
        return _out(_negotiation_view(record), 201)

    async def negotiation(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        record = await self._negotiations.wait(pid, _wait(request))
        return _out(_negotiation_view(record))

    async def negotiation_action(self, request: web.Request) -> web.Response:
        pid, action = request.match_info["id"], request.match_info["action"]
        if action == "accept":
            record = await self._negotiations.accept(pid)
        elif action == "terminate":
            reason = str((await _body(request)).get("reason", "terminated by operator"))
            record = await self._negotiations.terminate(pid, reason)
        else:
            raise NotFound(f"no action {action!r}")
        return _out(_negotiation_view(record))

    async def negotiations(self, request: web.Request) -> web.Response:
        return _out([_negotiation_view(r) for r in await self._store.list_negotiations()])

    async def agreements(self, request: web.Request) -> web.Response:
        return _out(await self._store.list_agreements())

    async def transfers(self, request: web.Request) -> web.Response:
        return _out(await self._store.list_transfers())

    async def transfer_start(self, request: web.Request) -> web.Response:
        body = await _body(request)
        push_to = None
        if body.get("push"):
            if self._push is None:
                raise NotFound("this connector receives no pushes")
            push_to = self._push.address_for(str(body.get("sink", "")))
        record = await self._transfers.start(str(body.get("agreementId", "")), push_to=push_to)
        wait = _wait(request)
        if wait:
            record = await self._transfers.wait_started(record.id, wait)
        return _out(record, 201)

    async def transfer(self, request: web.Request) -> web.Response:
        return _out(await self._transfers.mine(request.match_info["id"]))

    async def transfer_action(self, request: web.Request) -> web.Response:
        events = {"complete": TransferEvent.COMPLETE, "suspend": TransferEvent.SUSPEND,
                  "resume": TransferEvent.START, "terminate": TransferEvent.TERMINATE}
        event = events.get(request.match_info["action"])
        if event is None:
            raise NotFound(f"no action {request.match_info['action']!r}")
        reason = (await _body(request)).get("reason") if request.can_read_body else None
        return _out(await self._transfers.act(request.match_info["id"], event,
                                              str(reason) if reason else None))

    def _pull_address(self, record: Any) -> tuple[str, str]:
        """(endpoint, Authorization value) of a STARTED transfer's pull address."""
        address = record.data_address
        url = address.url() if address is not None else None
        if record.state is not TransferState.STARTED or address is None or not url:
            raise NotFound(f"transfer {record.id!r} is {record.state.value} with no data address")
        return url, address.authorization_header()

    async def transfer_data(self, request: web.Request) -> web.StreamResponse:
        """Pull a STARTED transfer's records through this daemon, from ``?offset=N`` on.

        The caller verifies its copy against ``/summary`` and then completes the transfer;
        a stream cut mid-way ends without a proper end, so a partial copy is never taken
        for a whole one.
        """
        pid = request.match_info["id"]
        endpoint, token = self._pull_address(await self._transfers.mine(pid))
        offset = int(request.query.get("offset", "0") or 0)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        started = False
        try:
            async with aclosing(self._client.pull(endpoint, token, offset)) as chunks:
                async for chunk in chunks:
                    if not started:
                        await response.prepare(request)
                        started = True
                    await response.write(chunk)
        except ConnectionError:  # our own client went away; it resumes by offset
            log.info("transfer %s: the local reader disconnected", pid)
            return response
        except PeerError:
            if not started:
                raise
            log.warning("transfer %s: pull interrupted", pid)
            if request.transport is not None:
                request.transport.close()
            return response
        if not started:
            await response.prepare(request)
        await response.write_eof()
        return response

    async def transfer_pull(self, request: web.Request) -> web.Response:
        """This daemon pulls the records into a sink itself (``sink``: a file path or
        ``sqlite:///PATH#table``; ``path`` is the older name), appending from ``offset``,
        checks count and SHA-256 against the provider's summary, and completes."""
        pid = request.match_info["id"]
        body = await _body(request)
        spec, offset = str(body.get("sink") or body.get("path", "")), int(body.get("offset", 0))
        parse_sink(spec)
        endpoint, token = self._pull_address(await self._transfers.mine(pid))
        summary = await self._client.data_summary(endpoint, token)
        t0 = time.monotonic()
        sink = await asyncio.to_thread(open_sink, spec, offset)
        try:
            await _drain(self._client.pull(endpoint, token, offset), sink)
        finally:
            await asyncio.to_thread(sink.close)
        got = {"bytes": sink.size, "sha256": sink.sha256()}
        if got != {k: summary.get(k) for k in got}:
            got["records"] = await asyncio.to_thread(lambda: sink.records)
            raise PeerError(f"copy does not match the provider's summary: {got} != {summary}")
        # The same bytes, hence the same records (JSON lines: one per line).
        got["records"] = summary["records"]
        await self._transfers.act(pid, TransferEvent.COMPLETE)
        return _out({**got, "seconds": round(time.monotonic() - t0, 3)})

    async def transfer_summary(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        endpoint, token = self._pull_address(await self._transfers.mine(pid))
        try:
            return _out(await self._client.data_summary(endpoint, token))
        except PeerError as exc:
            if exc.peer_status != 403 or "expired" not in exc.message:
                raise
        endpoint, token = await self._refresh(pid)  # expired: refresh once, then ask again
        return _out(await self._client.data_summary(endpoint, token))

    async def _refresh(self, pid: str) -> tuple[str, str]:
        endpoint, token = self._pull_address(await self._transfers.mine(pid))
        fresh = await self._client.refresh_data_token(endpoint, token)
        return self._pull_address(await self._transfers.replace_data_token(pid, fresh))

    async def transfer_refresh(self, request: web.Request) -> web.Response:
        """A fresh data token for a STARTED transfer (kept in our record)."""
        await self._refresh(request.match_info["id"])
        return _out(await self._transfers.mine(request.match_info["id"]))

    async def transfer_push(self, request: web.Request) -> web.Response:
        """What a push delivered and verified: records, bytes, SHA-256."""
        if self._push is None:
            raise NotFound("this connector receives no pushes")
        return _out(self._push.result(request.match_info["id"]))

    async def revoke(self, request: web.Request) -> web.Response:
        """Provider: withdraw an agreement; open transfers under it are terminated."""
        reason = str((await _body(request)).get("reason", "revoked by the provider"))
        ended = await self._transfers.revoke_agreement(request.match_info["id"], reason)
        return _out({"revoked": request.match_info["id"], "terminated": [t.id for t in ended]})

    def app(self) -> web.Application:
        from connector.adapters.http.errors import error_middleware

        app = web.Application(middlewares=[error_middleware, self.auth])
        r = app.router
        r.add_get("/api/catalog", self.catalog)
        r.add_post("/api/negotiations", self.negotiate)
        r.add_get("/api/negotiations", self.negotiations)
        r.add_post("/api/offers", self.offer)
        r.add_get("/api/negotiations/{id}", self.negotiation)
        r.add_post("/api/negotiations/{id}/{action}", self.negotiation_action)
        r.add_get("/api/agreements", self.agreements)
        r.add_post("/api/agreements/{id}/revoke", self.revoke)
        r.add_post("/api/transfers", self.transfer_start)
        r.add_get("/api/transfers", self.transfers)
        r.add_get("/api/transfers/{id}", self.transfer)
        r.add_get("/api/transfers/{id}/data", self.transfer_data)
        r.add_get("/api/transfers/{id}/summary", self.transfer_summary)
        r.add_post("/api/transfers/{id}/pull", self.transfer_pull)
        r.add_get("/api/transfers/{id}/push", self.transfer_push)
        r.add_post("/api/transfers/{id}/refresh", self.transfer_refresh)
        r.add_post("/api/transfers/{id}/{action}", self.transfer_action)
        return app


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        doc = msgspec.json.decode(await request.read())
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"body is not JSON: {exc}", area=None) from exc
    if not isinstance(doc, dict):
        raise MalformedMessage("body must be a JSON object", area=None)
    return doc


async def _drain(chunks: AsyncGenerator[bytes, None], sink: Sink) -> None:
    """Write a pull into ``sink`` as it arrives (the sink hashes and counts records).

    Inline on the loop: handing blocks to a worker thread measured slower here (GIL
    hand-offs cost more than hashing and writing save; bench/transfer.py)."""
    async with aclosing(chunks):
        async for chunk in chunks:
            sink.write(chunk)


def _pick_offer(catalog: Mapping[str, Any], dataset_id: str, offer_id: Any) -> dict[str, Any]:
    for dataset in catalog.get("dataset", []) or []:
        if dataset.get("@id") != dataset_id:
            continue
        offers = dataset.get("hasPolicy", [])
        if isinstance(offers, dict):
            offers = [offers]
        for offer in offers:
            if offer_id is None or offer.get("@id") == offer_id:
                return dict(offer)
        raise NotFound(f"dataset {dataset_id!r} has no offer {offer_id!r} for us")
    raise NotFound(f"the provider shows us no dataset {dataset_id!r}")


def _negotiation_view(record: Any) -> dict[str, Any]:
    view = msgspec.to_builtins(record)
    assert isinstance(view, dict)
    agreement = record.agreement
    view["agreementId"] = agreement.get("@id") if agreement else None
    return view
