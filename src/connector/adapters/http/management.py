"""The management API: loopback only, behind the token kept in ``keys/management.token``.

What the ``connector`` consumer commands call: read a provider's catalogue, negotiate, open
a transfer and pull its records, list what this participant holds.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from connector.adapters.http.client import PeerClient
from connector.adapters.http.errors import Handler, error_middleware
from connector.adapters.http.openapi import serve_document
from connector.adapters.sinks import Sink, open_sink, parse_sink
from connector.core import codec
from connector.core.errors import (
    AuthError,
    ConflictError,
    ConnectorError,
    InvalidParameter,
    NotFound,
    PeerError,
    TransferDenied,
)
from connector.core.transfer import TransferEvent, TransferState
from connector.service.consents import ConsentService
from connector.service.consumer import ConsumerService, Copy, copy_mismatch
from connector.service.negotiations import NegotiationService
from connector.service.store import Store
from connector.service.transfers import TransferService

log = logging.getLogger("connector.management")
# Long polls end after this many seconds at most, whatever the client asks.
MAX_WAIT_S = 120.0
# Set on a sub-application that authenticates its requests itself (the console's session).
OWN_AUTH = web.AppKey("own_auth", bool)


def _out(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(value),
                        content_type="application/json")


def _wait(request: web.Request) -> float:
    """``?wait=SECONDS`` (a non-negative number; at most MAX_WAIT_S is waited)."""
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0.0 <= wait < float("inf"):  # also refuses nan
        raise InvalidParameter(f"wait must be a non-negative number of seconds, not {raw!r}")
    return min(MAX_WAIT_S, wait)


def _query_count(request: web.Request, name: str) -> int:
    """A non-negative integer query parameter (0 when absent)."""
    raw = request.query.get(name)
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidParameter(f"{name} must be a non-negative integer, not {raw!r}")
    return int(raw)


def _body_count(body: Mapping[str, Any], name: str) -> int:
    """A non-negative integer member of a JSON body (0 when absent)."""
    value = body.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidParameter(f"{name} must be a non-negative integer, not "
                               f"{msgspec.json.encode(value).decode()[:100]}")
    return value


def _body_text(body: Mapping[str, Any], name: str, default: str = "") -> str:
    """A string member of a JSON body (``default`` when absent or null)."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidParameter(f"{name} must be a string, not "
                               f"{msgspec.json.encode(value).decode()[:100]}")
    return value


def _body_required(body: Mapping[str, Any], name: str) -> str:
    """A required, non-empty string member of a JSON body."""
    value = _body_text(body, name)
    if not value:
        raise InvalidParameter(f"{name} is required")
    return value


@dataclass(frozen=True, kw_only=True)
class ManagementDeps:
    """What the management API works with."""

    token: str
    store: Store
    negotiations: NegotiationService
    transfers: TransferService
    client: PeerClient
    consumer: ConsumerService
    push: Any = None  # a PushReceiver (adapters/http/push.py), where pushes land
    status: Callable[[], dict[str, Any]] | None = None  # the daemon's own state (version,
    # URLs, pending restarts)
    consents: ConsentService | None = None  # the provider's consent register


# The management routes: (method, path, handler method). Their contract is
# adapters/http/openapi.yaml, which a test keeps equal to this table.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/api/catalog", "catalog"),
    ("POST", "/api/negotiations", "negotiate"),
    ("GET", "/api/negotiations", "negotiations"),
    ("POST", "/api/offers", "offer"),
    ("GET", "/api/negotiations/{id}", "negotiation"),
    ("POST", "/api/negotiations/{id}/{action}", "negotiation_action"),
    ("GET", "/api/agreements", "agreements"),
    ("POST", "/api/agreements/{id}/revoke", "revoke"),
    ("POST", "/api/transfers", "transfer_start"),
    ("GET", "/api/transfers", "transfers"),
    ("GET", "/api/transfers/{id}", "transfer"),
    ("GET", "/api/transfers/{id}/data", "transfer_data"),
    ("GET", "/api/transfers/{id}/summary", "transfer_summary"),
    ("POST", "/api/transfers/{id}/pull", "transfer_pull"),
    ("GET", "/api/transfers/{id}/push", "transfer_push"),
    ("POST", "/api/transfers/{id}/refresh", "transfer_refresh"),
    ("POST", "/api/transfers/{id}/{action}", "transfer_action"),
    ("GET", "/api/agreements/{id}", "agreement"),
    ("GET", "/api/status", "status"),
    ("GET", "/api/consents", "consents"),
    ("POST", "/api/consents", "consent_grant"),
    ("POST", "/api/consents/withdraw", "consent_withdraw"),
)


class ManagementApi:
    def __init__(self, deps: ManagementDeps) -> None:
        self.d = deps

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if any(OWN_AUTH in app for app in request.match_info.apps):
            return await handler(request)
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {self.d.token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise AuthError("management token missing or wrong")
        return await handler(request)

    async def catalog(self, request: web.Request) -> web.Response:
        provider = self.d.consumer.provider(request.query.get("provider", ""))
        return _out(await self.d.consumer.catalog(provider))

    async def negotiate(self, request: web.Request) -> web.Response:
        wait = _wait(request)  # every parameter checked before anything starts
        body = await _body(request)
        dataset_id = _body_text(body, "datasetId")
        chosen = await self.d.consumer.choose_offer(_body_text(body, "provider"), dataset_id,
                                                   body.get("offerId"))
        record = await self.d.negotiations.start(
            provider_base=chosen.provider.dsp_base, provider_id=chosen.provider.participant_id,
            dataset_id=dataset_id, offer=chosen.offer)
        if wait:
            record = await self.d.negotiations.wait(record.id, wait)
        return _out(_negotiation_view(record), 201)

    async def offer(self, request: web.Request) -> web.Response:
        """Provider-initiated negotiation: offer a dataset to a pinned consumer."""
        body = await _body(request)
        peer = self.d.consumer.provider(_body_text(body, "consumer"))
        record = await self.d.negotiations.offer(
            consumer_base=peer.dsp_base, consumer_id=peer.participant_id,
            dataset_id=_body_text(body, "datasetId"),
            send=self.d.client.send_initial)
        return _out(_negotiation_view(record), 201)

    async def negotiation(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        record = await self.d.negotiations.wait(pid, _wait(request))
        return _out(_negotiation_view(record))

    async def negotiation_action(self, request: web.Request) -> web.Response:
        pid, action = request.match_info["id"], request.match_info["action"]
        if action == "accept":
            record = await self.d.negotiations.accept(pid)
        elif action == "terminate":
            reason = _body_text(await _body(request), "reason", "terminated by operator")
            record = await self.d.negotiations.terminate(pid, reason)
        else:
            raise NotFound(f"no action {action!r}")
        return _out(_negotiation_view(record))

    async def negotiations(self, request: web.Request) -> web.Response:
        return _out([_negotiation_view(r) for r in await self.d.store.list_negotiations()])

    async def agreements(self, request: web.Request) -> web.Response:
        return _out(await self.d.store.list_agreements())

    async def transfers(self, request: web.Request) -> web.Response:
        return _out(await self.d.store.list_transfers())

    async def transfer_start(self, request: web.Request) -> web.Response:
        wait = _wait(request)
        body = await _body(request)
        push_to = None
        if body.get("push"):
            if self.d.push is None:
                raise NotFound("this connector receives no pushes")
            push_to = self.d.push.address_for(_body_text(body, "sink"))
        record = await self.d.transfers.start(_body_text(body, "agreementId"), push_to=push_to)
        if wait:
            record = await self.d.transfers.wait_started(record.id, wait)
        return _out(record, 201)

    async def transfer(self, request: web.Request) -> web.Response:
        return _out(await self.d.transfers.mine(request.match_info["id"]))

    async def transfer_action(self, request: web.Request) -> web.Response:
        events = {"complete": TransferEvent.COMPLETE, "suspend": TransferEvent.SUSPEND,
                  "resume": TransferEvent.START, "terminate": TransferEvent.TERMINATE}
        event = events.get(request.match_info["action"])
        if event is None:
            raise NotFound(f"no action {request.match_info['action']!r}")
        reason = _body_text(await _body(request), "reason") or None
        return _out(await self.d.transfers.act(request.match_info["id"], event, reason))

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
        pid, offset = request.match_info["id"], _query_count(request, "offset")
        endpoint, token = self._pull_address(await self.d.transfers.mine(pid))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        started = False
        try:
            async with aclosing(self.d.client.pull(endpoint, token, offset)) as chunks:
                async for chunk in chunks:
                    if not started:
                        await response.prepare(request)
                        started = True
                    await response.write(chunk)
        except ConnectionError:  # our own client went away; it resumes by offset
            log.info("transfer %s: the local reader disconnected", pid)
            return response
        except PeerError as exc:
            if not started:
                raise _refusal(exc) from exc
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
        spec = _body_text(body, "sink") or _body_text(body, "path")
        offset = _body_count(body, "offset")
        parse_sink(spec)
        endpoint, token = self._pull_address(await self.d.transfers.mine(pid))
        try:
            summary = await self.d.client.data_summary(endpoint, token)
            t0 = time.monotonic()
            sink = await asyncio.to_thread(open_sink, spec, offset)
            try:
                await _drain(self.d.client.pull(endpoint, token, offset), sink)
            finally:
                await asyncio.to_thread(sink.close)
        except PeerError as exc:
            raise _refusal(exc) from exc
        records = await asyncio.to_thread(lambda: sink.records)
        copy = Copy(records=records, bytes=sink.size, sha256=sink.sha256())
        problem = copy_mismatch(copy, summary)
        if problem is not None:
            # Whose fault is unknown (a sink resumed over other content, or the provider's
            # stream): a conflict the caller resolves by pulling again from offset 0.
            raise ConflictError(f"{problem}; pull again from offset 0")
        await self.d.transfers.act(pid, TransferEvent.COMPLETE)
        return _out({**copy.as_dict(), "seconds": round(time.monotonic() - t0, 3)})

    async def transfer_summary(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        endpoint, token = self._pull_address(await self.d.transfers.mine(pid))
        try:
            return _out(await self.d.client.data_summary(endpoint, token))
        except PeerError as exc:
            if exc.peer_status != 403 or "expired" not in exc.message:
                raise _refusal(exc) from exc
        try:  # expired: refresh once, then ask again
            endpoint, token = await self._refresh(pid)
            return _out(await self.d.client.data_summary(endpoint, token))
        except PeerError as exc:
            raise _refusal(exc) from exc

    async def _refresh(self, pid: str) -> tuple[str, str]:
        endpoint, token = self._pull_address(await self.d.transfers.mine(pid))
        fresh = await self.d.client.refresh_data_token(endpoint, token)
        return self._pull_address(await self.d.transfers.replace_data_token(pid, fresh))

    async def transfer_refresh(self, request: web.Request) -> web.Response:
        """A fresh data token for a STARTED transfer (kept in our record)."""
        try:
            await self._refresh(request.match_info["id"])
        except PeerError as exc:
            raise _refusal(exc) from exc
        return _out(await self.d.transfers.mine(request.match_info["id"]))

    async def transfer_push(self, request: web.Request) -> web.Response:
        """What a push delivered and verified: records, bytes, SHA-256."""
        if self.d.push is None:
            raise NotFound("this connector receives no pushes")
        return _out(self.d.push.result(request.match_info["id"]))

    async def revoke(self, request: web.Request) -> web.Response:
        """Provider: withdraw an agreement; open transfers under it are terminated."""
        reason = _body_text(await _body(request), "reason", "revoked by the provider")
        ended = await self.d.transfers.revoke_agreement(request.match_info["id"], reason)
        return _out({"revoked": request.match_info["id"], "terminated": [t.id for t in ended]})

    async def agreement(self, request: web.Request) -> web.Response:
        """One agreement, with ``uses`` (counted by the provider; null on the consumer's
        side) and the ids of the transfers made under it (``connector agreements``)."""
        found = await self.d.store.get_agreement(request.match_info["id"])
        if found is None:
            raise NotFound(f"no agreement {request.match_info['id']!r}")
        # Adding 0 reads the count in the same atomic statement that counts uses.
        uses = await self.d.store.add_use(found.id, 0) if found.role == "provider" else None
        transfers = [t.id for t in await self.d.store.list_transfers(found.id)]
        view = msgspec.to_builtins(found)
        return _out({**view, "uses": uses, "transfers": transfers})

    async def status(self, request: web.Request) -> web.Response:
        """The daemon itself: version, URLs, edits waiting for a restart (``connector
        status``)."""
        return _out(self.d.status() if self.d.status is not None else {})

    def _register(self) -> ConsentService:
        if self.d.consents is None:
            raise NotFound("this connector keeps no consent register")
        return self.d.consents

    async def consents(self, request: web.Request) -> web.Response:
        """The consent register, one row per consent with its state (``connector consent
        list``)."""
        return _out(self._register().listing())

    async def consent_grant(self, request: web.Request) -> web.Response:
        """Record a subject's consent; in force for every stream once answered."""
        body = await _body(request)
        subject, consumer, purpose, until = (_body_required(body, name) for name in
                                             ("subject", "consumer", "purpose", "until"))
        await self._register().grant(subject, consumer, purpose, until)
        return _out({"subject": subject, "consumer": consumer, "purpose": purpose,
                     "until": until}, 201)

    async def consent_withdraw(self, request: web.Request) -> web.Response:
        """Withdraw a subject's consents in force (of one consumer / purpose if given); in
        force for every stream, running ones included, once answered."""
        body = await _body(request)
        subject = _body_required(body, "subject")
        consumer = _body_text(body, "consumer") or None
        purpose = _body_text(body, "purpose") or None
        count = await self._register().withdraw(subject, consumer, purpose)
        return _out({"subject": subject, "withdrawn": count})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[error_middleware, self.auth])
        for method, path, handler in ROUTES:
            app.router.add_route(method, path, getattr(self, handler))
        app.router.add_get("/api/openapi.json", serve_document)
        return app


def _refusal(exc: PeerError) -> ConnectorError:
    """The provider's data plane refusing our token (403: the transfer was suspended,
    terminated, revoked, or its token replaced) is a refusal the local caller hears as one,
    403, not as a failure of the provider (502)."""
    if exc.peer_status == 403:
        return TransferDenied(f"the provider refuses: {exc.peer_reason or exc.message}")
    return exc


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object of the request body ({} without one); 400 if it is not one."""
    if not request.can_read_body:
        return {}
    return codec.decode_json(await request.read())


async def _drain(chunks: AsyncGenerator[bytes, None], sink: Sink) -> None:
    """Write a pull into ``sink`` as it arrives (the sink hashes and counts records).

    Inline on the loop: handing blocks to a worker thread measured slower here (GIL
    hand-offs cost more than hashing and writing save; bench/transfer.py)."""
    async with aclosing(chunks):
        async for chunk in chunks:
            sink.write(chunk)


def _negotiation_view(record: Any) -> dict[str, Any]:
    view = msgspec.to_builtins(record)
    assert isinstance(view, dict)
    agreement = record.agreement
    view["agreementId"] = agreement.get("@id") if agreement else None
    return view
