"""The registry's HTTPS API (JSON). A route parses, calls one service method, renders.

    POST /publish                       body: a snapshot JWS (application/jose); no token needed,
                                        the JWS is the publisher's signature
    GET  /participant?id=DID            the entry (DSP endpoint, datasets); If-None-Match: "etag"
                                        answers 304 while the held snapshot needs no renewal
    GET  /search?q=&publisher=&keyword=&theme=&format=&limit=&offset=
    GET  /changes?since=VERSION&limit=N the change feed replicas pull
    POST /audit/checkpoints             body: a member's signed audit checkpoint (the JWS is the
                                        member's signature); kept with the time received
    GET  /audit/checkpoints?participant=DID  what that member sent, to compare its chain with
    GET  /.well-known/did.json, /health

Every GET but the last two needs a self-issued token (``Authorization: Bearer``, ``aud`` =
the registry's DID) from a member or a peer registry pinned in the registry's ``trust/``.
Errors are rendered by the connector's one error middleware as ``{"error", "message"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

from connector.adapters.http.errors import error_middleware
from connector.core.errors import MalformedMessage, NotFound
from connector.registry.model import MAX_JWS_CHARS
from connector.registry.service import RegistryService
from connector.registry.store import MAX_PAGE, SearchQuery
from connector.service.auth import Verifier

JSON = "application/json"


def _out(value: Any, status: int = 200, headers: Mapping[str, str] | None = None
         ) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(value), content_type=JSON,
                        headers=headers)


def _int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise MalformedMessage(f"query parameter {name!r} must be an integer", area=None) from exc


def search_query(request: web.Request) -> SearchQuery:
    """The search parameters of a request (shared with the management API route)."""
    q = request.query
    return SearchQuery(text=q.get("q", ""), publisher=q.get("publisher") or None,
                       keyword=q.get("keyword") or None, theme=q.get("theme") or None,
                       format=q.get("format") or None,
                       limit=max(1, min(_int(request, "limit", 20), MAX_PAGE)),
                       offset=max(0, _int(request, "offset", 0)))


def _etag(header: str | None) -> str | None:
    return header.strip().removeprefix("W/").strip('"') if header else None


class RegistryApi:
    def __init__(self, service: RegistryService, verifier: Verifier,
                 did_document: Mapping[str, Any]) -> None:
        self._service = service
        self._verifier = verifier
        self._did_document = dict(did_document)

    def _caller(self, request: web.Request) -> None:
        claims = self._verifier.verify(request.headers.get("Authorization"))
        self._service.admit(claims)

    async def publish(self, request: web.Request) -> web.Response:
        jws = (await request.read()).decode("ascii", "replace").strip()
        if not jws:
            raise MalformedMessage("body must be a snapshot JWS", area=None)
        done = await self._service.publish(jws)
        return _out({"etag": done.etag, "version": done.version,
                     "changed": done.version is not None}, headers={"ETag": f'"{done.etag}"'})

    async def participant(self, request: web.Request) -> web.Response:
        self._caller(request)
        did = request.query.get("id", "")
        etag = _etag(request.headers.get("If-None-Match"))
        if etag and self._service.unchanged(did, etag):
            return web.Response(status=304, headers={"ETag": f'"{etag}"'})
        entry = await self._service.participant(did)
        if entry is None:
            raise NotFound(f"no live entry for {did[:200]!r}")
        return _out(entry, headers={"ETag": f'"{entry["etag"]}"'})

    async def search(self, request: web.Request) -> web.Response:
        self._caller(request)
        query = search_query(request)
        result = await self._service.search(query)
        following = query.offset + len(result.items)
        return _out({"total": result.total, "offset": query.offset, "limit": query.limit,
                     "next": following if following < result.total else None,
                     "items": result.items, "facets": result.facets,
                     "facetsExact": result.facets_exact})

    async def changes(self, request: web.Request) -> web.Response:
        self._caller(request)
        since = _int(request, "since", 0)
        rows = await self._service.changes(since, _int(request, "limit", 500))
        return _out({"changes": [{"version": v, "snapshot": jws} for v, jws in rows],
                     "latest": self._service.store.version})

    async def witness(self, request: web.Request) -> web.Response:
        jws = (await request.read()).decode("ascii", "replace").strip()
        if not jws:
            raise MalformedMessage("body must be an audit checkpoint JWS", area=None)
        return _out({"receivedAt": await self._service.witness(jws)})

    async def witnessed(self, request: web.Request) -> web.Response:
        self._caller(request)
        participant = request.query.get("participant", "")
        return _out({"participant": participant,
                     "checkpoints": await self._service.witnessed(participant)})

    async def did_document(self, request: web.Request) -> web.Response:
        return _out(self._did_document)

    async def health(self, request: web.Request) -> web.Response:
        return _out({"status": "ok", "entries": len(self._service.store.heads),
                     "version": self._service.store.version})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[error_middleware], client_max_size=MAX_JWS_CHARS)
        r = app.router
        r.add_post("/publish", self.publish)
        r.add_get("/participant", self.participant)
        r.add_get("/search", self.search)
        r.add_get("/changes", self.changes)
        r.add_post("/audit/checkpoints", self.witness)
        r.add_get("/audit/checkpoints", self.witnessed)
        r.add_get("/.well-known/did.json", self.did_document)
        r.add_get("/health", self.health)
        return app
