"""DSP 2025-1 HTTPS binding: routes that parse, call one service method, and render.

Our ``callbackAddress`` is our own DSP base, so the consumer callbacks (``<cb>/negotiations/
:consumerPid/…``) and the provider endpoints share one set of routes; the record found by the
pid in the path says which role we play, and the state table decides what is legal.
Every route but the two well-known documents verifies the caller's token before it reads the
body. A trailing slash is accepted on every path (the TCK's callback paths vary).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from connector import logs
from connector.core import codec
from connector.core.binding import BINDINGS, DATASET_PATH, DSP_PATH, PROCESS_PATHS, Binding
from connector.core.catalog import is_paging_only, with_context
from connector.core.errors import Area, CatalogError, MalformedMessage, ModesDiffer
from connector.core.messages import (
    CatalogRequestMessage,
    ContractOfferMessage,
    ContractRequestMessage,
    Message,
    TransferRequestMessage,
)
from connector.core.negotiation import Negotiation
from connector.core.transfer import Transfer
from connector.service import audit
from connector.service.auth import Verifier, bind_body
from connector.service.catalog import Catalog, Claims
from connector.service.negotiations import NegotiationService
from connector.service.transfers import TransferService

JSON = "application/json"
# A DSP control message is small; 1 MiB leaves room for large offers and refuses floods.
MAX_BODY = 1024 * 1024
# The caller ``DspRoutes.caller`` verified in this request's task, whose token ``body`` binds.
_verified_caller: ContextVar[Claims | None] = ContextVar("dsp_verified_caller", default=None)
Handler = Callable[[web.Request], Awaitable[web.Response]]


@dataclass
class DspDeps:
    verifier: Verifier
    catalog: Callable[[], Catalog]
    negotiations: NegotiationService
    transfers: TransferService
    did_document: dict[str, Any]
    trail: audit.AuditTrail | None = None  # records catalogue answers (None: no audit trail)


class _Node(msgspec.Struct):
    """A JSON-LD node's own identity: the ``@id`` a sender gives its message."""

    id: str | None = msgspec.field(default=None, name="@id")


_node = msgspec.json.Decoder(_Node)


def message_id(body: bytes) -> str | None:
    """The ``@id`` of a message body that already decoded as a message; None if absent."""
    try:
        return _node.decode(body).id
    except msgspec.DecodeError:  # ValidationError included: an @id that is not a string
        return None


def _json(msg: Message, status: int = 200) -> web.Response:
    return web.Response(status=status, body=codec.encode(msg), content_type=JSON)


def _doc(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=codec.encode_json(doc), content_type=JSON)


class DspRoutes:
    def __init__(self, deps: DspDeps) -> None:
        self.d = deps

    def claims(self, request: web.Request) -> Claims:
        """Synchronous check (pinned mode only); kept for profiles that subclass these routes."""
        return self.d.verifier.verify(request.headers.get("Authorization"))

    async def caller(self, request: web.Request) -> Claims:
        """The caller's verified claims, before the body is read (DCP mode does network IO)."""
        claims = await self.d.verifier.verify_async(request.headers.get("Authorization"))
        logs.bind(peer=claims.participant_id)  # every later line of this request names it
        _verified_caller.set(claims)  # for ``body``: each request runs in its own task
        return claims

    async def body(self, request: web.Request, area: Area) -> bytes:
        """The body of a verified request, checked against its token's body digest claim and
        handed to the audit trail as the message the steps it causes answer."""
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise MalformedMessage("body too large", area=area)
        raw = await request.read()
        claims = _verified_caller.get()
        if claims is not None:
            authorization = request.headers.get("Authorization")
            binding = bind_body(authorization, raw, required=self.d.verifier.requires_binding(
                claims.participant_id))
            did = claims.participant_id
            audit.received(audit.Inbound(peer=did, token_id=binding.token_id,
                                         token=binding.token, body=raw, bound=binding.bound,
                                         document=self.d.verifier.peer_document(did),
                                         body_digest=binding.body_digest))
        return raw

    # -- well-known ----------------------------------------------------------------------------

    async def version(self, request: web.Request) -> web.Response:
        # DSP 2025-1 §Common 4.3: unversioned, unauthenticated, no @context.
        return _doc({"protocolVersions": [{
            "version": "2025-1", "path": DSP_PATH, "binding": "HTTPS",
            "identifierType": "did:web",
        }]})

    async def did_document(self, request: web.Request) -> web.Response:
        return _doc(self.d.did_document)

    # -- catalogue ----------------------------------------------------------------------------

    async def catalog_request(self, request: web.Request) -> web.Response:
        claims = await self.caller(request)
        msg = codec.decode(await self.body(request, Area.CATALOG), CatalogRequestMessage,
                           area=Area.CATALOG)
        if msg.filter and not is_paging_only(msg.filter):
            raise CatalogError("catalog filter expressions are not supported", status=400)
        doc = self.d.catalog().catalog(claims)
        if self.d.trail is not None:
            self.d.trail.catalog_answer(claims.participant_id, doc)
        return _doc(doc)

    async def dataset(self, request: web.Request) -> web.Response:
        claims = await self.caller(request)
        doc = self.d.catalog().dataset(request.match_info["id"], claims)
        return _doc(with_context(doc))

    # -- negotiation and transfer --------------------------------------------------------------

    def _service(self, area: Area) -> NegotiationService | TransferService:
        return self.d.negotiations if area is Area.NEGOTIATION else self.d.transfers

    def process_get(self, area: Area) -> Handler:
        """GET a negotiation or transfer process: its ack (DSP 2025-1 §CN 3, §TP 3)."""
        async def handler(request: web.Request) -> web.Response:
            claims = await self.caller(request)
            record = await self._service(area).get(request.match_info["pid"], claims)
            return _json(record.ack())
        return handler

    def process_initial(self, binding: Binding) -> Handler:
        """A message that creates a process: 201 with its ack (DSP 2025-1 §CN 3.2, §TP 3.2)."""
        async def handler(request: web.Request) -> web.Response:
            claims = await self.caller(request)
            msg = codec.decode(await self.body(request, binding.area), binding.message,
                               area=binding.area)
            if isinstance(msg, ContractRequestMessage):
                record: Negotiation | Transfer = (
                    await self.d.negotiations.on_initial_request(msg, claims))
            elif isinstance(msg, ContractOfferMessage):
                record = await self.d.negotiations.on_initial_offer(msg, claims)
            elif isinstance(msg, TransferRequestMessage):
                record = await self.d.transfers.on_request(msg, claims)
            else:  # the binding table names no other initial process message
                raise MalformedMessage(f"{type(msg).__name__} creates no process",
                                       area=binding.area)
            return _json(record.ack(), 201)
        return handler

    def process_message(self, binding: Binding) -> Handler:
        """A message on an existing process, found by the pid in its path."""
        async def handler(request: web.Request) -> web.Response:
            try:
                claims = await self.caller(request)
            except ModesDiffer as exc:  # our process with it cannot go on: say so on it
                await self._service(binding.area).on_modes_differ(request.match_info["pid"],
                                                                  exc.issuer)
                raise
            raw = await self.body(request, binding.area)
            # The binding gives the type; the service of its area takes it (one of its union).
            msg: Any = codec.decode(raw, binding.message, area=binding.area)
            record = await self._service(binding.area).on_message(
                request.match_info["pid"], msg, claims, message_id=message_id(raw))
            return _json(record.ack())
        return handler

    def register(self, app: web.Application) -> None:
        """Every route of the binding table (``core.binding``), plus the two well-known
        documents and the GETs."""
        base = DSP_PATH
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("GET", "/.well-known/dspace-version", self.version),
            ("GET", "/.well-known/did.json", self.did_document),
            ("GET", base + DATASET_PATH, self.dataset),
        ]
        routes += [("GET", base + PROCESS_PATHS[area], self.process_get(area))
                   for area in (Area.NEGOTIATION, Area.TRANSFER)]
        routes += [("POST", base + b.path, self._handler(b)) for b in BINDINGS]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, path + "/", handler)

    def _handler(self, binding: Binding) -> Handler:
        if binding.area is Area.CATALOG:
            return self.catalog_request
        return self.process_initial(binding) if binding.initial else self.process_message(binding)
