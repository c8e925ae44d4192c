"""The consumer's side: search the registries, and keep the last results for when none answers.

``RegistrySearch`` asks each configured registry in turn (``[registry] urls`` of
``connector.toml``) with a self-issued token, and stores every answer in
``state/registry-search.json``; when no registry answers, the last answer to the same query is
returned marked ``stale``. Nothing else ever needs a registry: a negotiation or a transfer
talks to the provider only.

Three callers: ``connector search QUERY`` (``search_command``), the management API
(``add_search_route``: ``GET /api/registry/search``), and ``make demo``
(``find_provider_url``: the consumer finds its provider through the registry).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import msgspec
from aiohttp import web

from connector.adapters.http.client import client_ssl_context
from connector.config import Settings, load_settings
from connector.core.binding import DSP_PATH
from connector.core.codec import within_depth
from connector.core.errors import ConfigError, NotFound, PeerError
from connector.participant.trust import load_trust
from connector.registry.publisher import Signer
from connector.registry.store import SearchQuery

log = logging.getLogger("connector.registry.search")
CACHE_FILE = "state/registry-search.json"
# Distinct queries whose last answer is kept; the oldest are dropped first.
CACHE_ENTRIES = 200
SEARCH_TIMEOUT_S = 10.0


def query_params(query: SearchQuery) -> dict[str, str]:
    params = {"q": query.text, "limit": str(query.limit), "offset": str(query.offset)}
    for name in ("publisher", "keyword", "theme", "format"):
        value = getattr(query, name)
        if value:
            params[name] = value
    return params


class RegistrySearch:
    def __init__(self, registries: Sequence[str], signer: Signer, *,
                 session: Callable[[], aiohttp.ClientSession], cache: Path | None) -> None:
        self._registries = [r.rstrip("/") for r in registries]
        self._signer = signer
        self._session = session
        self._cache = cache

    @classmethod
    def from_settings(cls, settings: Settings, *,
                      session: Callable[[], aiohttp.ClientSession]) -> RegistrySearch:
        return cls(settings.registries, Signer.from_settings(settings), session=session,
                   cache=settings.root / CACHE_FILE)

    async def search(self, query: SearchQuery) -> dict[str, Any]:
        """The first registry's answer, or the last kept answer (``stale``), or PeerError."""
        if not self._registries:
            raise ConfigError("no registry configured: add [registry] urls to connector.toml")
        params = query_params(query)
        key = urlencode(sorted(params.items()))
        errors = []
        for registry in self._registries:
            try:
                answer = await self._ask(registry, params)
            except PeerError as exc:
                errors.append(exc.message)
                continue
            answer.update(registry=registry, stale=False)
            self._keep(key, answer)
            return answer
        kept = self._kept().get(key)
        if kept is not None:
            log.warning("no registry answered; using the last results: %s", "; ".join(errors))
            return {**kept, "stale": True}
        raise PeerError("no registry answered: " + "; ".join(errors))

    async def _ask(self, registry: str, params: dict[str, str]) -> dict[str, Any]:
        body = await get_ok(self._session(), f"{registry}/search?{urlencode(params)}",
                            authorization=self._signer.authorization(registry),
                            shown=registry, timeout_s=SEARCH_TIMEOUT_S)
        try:
            doc = msgspec.json.decode(within_depth(body))
        except ValueError as exc:  # msgspec.DecodeError is one
            raise PeerError(f"{registry}: not a search result: {exc}") from exc
        if not isinstance(doc, dict):
            raise PeerError(f"{registry}: not a search result")
        return doc

    def _kept(self) -> dict[str, Any]:
        if self._cache is None or not self._cache.is_file():
            return {}
        try:
            kept = json.loads(self._cache.read_text())
        except (OSError, ValueError):
            return {}
        return kept if isinstance(kept, dict) else {}

    def _keep(self, key: str, answer: dict[str, Any]) -> None:
        if self._cache is None:
            return
        kept = self._kept()
        kept.pop(key, None)
        kept[key] = answer
        while len(kept) > CACHE_ENTRIES:
            kept.pop(next(iter(kept)))
        self._cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._cache.with_name(self._cache.name + ".tmp")
        tmp.write_text(json.dumps(kept))
        tmp.replace(self._cache)


def provider_root(endpoint: str) -> str:
    """The provider's root URL (what ``connector negotiate`` takes) from its DSP endpoint."""
    return endpoint.rstrip("/").removesuffix(DSP_PATH)


# --- the three callers ----------------------------------------------------------------------------


async def get_ok(session: aiohttp.ClientSession, url: str, *, authorization: str, shown: str,
                 timeout_s: float | None = None) -> bytes:
    """GET ``url`` from a registry: the body of its 200 answer, or PeerError naming ``shown``
    (another status, a refused connection, a timeout)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s is not None else None
    try:
        async with session.get(url, headers={"Authorization": authorization},
                               timeout=timeout) as resp:
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise PeerError(f"{shown}: {type(exc).__name__}: {exc}") from exc
    if resp.status != 200:
        raise PeerError(f"{shown} answered {resp.status}: {body[:200]!r}",
                        peer_status=resp.status)
    return body


def pinned_session(root: Path) -> aiohttp.ClientSession:
    """A session trusting the system CAs and the certificates pinned in ``trust/``."""
    ctx = client_ssl_context(p.tls_cert_pem or "" for p in load_trust(root).values())
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))


async def search_folder(root: Path, query: SearchQuery) -> dict[str, Any]:
    """Search the registries of the participant folder ``root`` (no daemon needed)."""
    settings = load_settings(root)
    session = pinned_session(root)
    try:
        return await RegistrySearch.from_settings(settings, session=lambda: session).search(query)
    finally:
        await session.close()


def _format(answer: dict[str, Any]) -> str:
    lines = []
    if answer.get("stale"):
        lines.append("(no registry answered: these are the last results kept)")
    for item in answer.get("items", []):
        lines.append(f"{item['datasetId']}  {item['title']}")
        lines.append(f"    provider {provider_root(item['endpoint'])}  ({item['participantId']})")
        if item.get("keywords"):
            lines.append(f"    keywords: {', '.join(item['keywords'])}")
    shown = answer.get("offset", 0) + len(answer.get("items", []))
    lines.append(f"{shown} of {answer.get('total', 0)} datasets"
                 + (f"; next page: --offset {answer['next']}" if answer.get("next") else ""))
    for facet, values in (answer.get("facets") or {}).items():
        if values:
            listed = ", ".join(f"{v['value']} ({v['count']})" for v in values[:5])
            lines.append(f"  {facet}: {listed}")
    return "\n".join(lines)


def search_command(args: argparse.Namespace) -> int:
    """``connector search QUERY [--keyword K] [--publisher DID] [--json] ...``."""
    query = SearchQuery(text=args.query, publisher=args.publisher, keyword=args.keyword,
                        theme=args.theme, format=args.format, limit=args.limit,
                        offset=args.offset)
    answer = asyncio.run(search_folder(args.dir, query))
    print(json.dumps(answer, indent=2) if args.json else _format(answer))
    return 0


def add_search_route(app: web.Application, searcher: RegistrySearch) -> None:
    """Management API: ``GET /api/registry/search`` with the registry's query parameters."""
    from connector.registry.http import search_query

    async def handler(request: web.Request) -> web.Response:
        answer = await searcher.search(search_query(request))
        return web.Response(body=msgspec.json.encode(answer), content_type="application/json")

    app.router.add_get("/api/registry/search", handler)


def find_provider_url(consumer_dir: Path, query: str) -> str:
    """For ``make demo``: the root URL of the provider of the best match for ``query``."""
    answer = asyncio.run(search_folder(consumer_dir, SearchQuery(text=query, limit=1)))
    if not answer.get("items"):
        raise NotFound(f"the registry knows no dataset matching {query!r}")
    return provider_root(str(answer["items"][0]["endpoint"]))
