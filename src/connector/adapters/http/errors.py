"""One middleware renders every error of the tree in the shape its edge requires.

DSP 2025-1 §CN/§TP HTTPS bindings: errors on negotiation and transfer endpoints are
``ContractNegotiationError`` / ``TransferError`` bodies carrying both pids; an unauthorised
caller gets a 404 there, so that existence is not revealed. Catalogue errors are
``CatalogError`` bodies. The management API answers ``{"error", "message"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from connector.core import codec
from connector.core.errors import (
    Area,
    AuthError,
    CatalogError,
    ConnectorError,
    ProtocolError,
    UnknownProcess,
)
from connector.core.messages import DSP_CONTEXT

log = logging.getLogger("connector.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The error a response was rendered from, kept on the request for outer middlewares (metrics).
REQUEST_ERROR = web.RequestKey("connector.error", ConnectorError)

_ERROR_TYPES = {Area.NEGOTIATION: "ContractNegotiationError", Area.TRANSFER: "TransferError",
                Area.CATALOG: "CatalogError"}


def area_of(path: str) -> Area | None:
    if "/negotiations" in path:
        return Area.NEGOTIATION
    if "/transfers" in path:
        return Area.TRANSFER
    if "/catalog" in path:
        return Area.CATALOG
    return None


def dsp_error_body(area: Area, code: str, message: str, *, consumer_pid: str | None = None,
                   provider_pid: str | None = None) -> bytes:
    doc: dict[str, object] = {"@context": [DSP_CONTEXT], "@type": _ERROR_TYPES[area]}
    if area is not Area.CATALOG:
        # The error schemas require both pids; we fill what we know.
        doc["consumerPid"] = consumer_pid or ""
        doc["providerPid"] = provider_pid or ""
    doc["code"] = code
    doc["reason"] = [message]
    return codec.encode_json(doc)


def _render_dsp(request: web.Request, area: Area, exc: ConnectorError) -> web.Response:
    status, code, message = exc.status, exc.code, exc.message
    pids: dict[str, str | None] = {}
    if isinstance(exc, ProtocolError):
        pids = {"consumer_pid": exc.consumer_pid, "provider_pid": exc.provider_pid}
        area = exc.area if area is not Area.CATALOG else area
    if isinstance(exc, AuthError) and area is not Area.CATALOG:
        status, code, message = 404, UnknownProcess.code, "not found"
    if isinstance(exc, CatalogError):
        area = Area.CATALOG
    body = dsp_error_body(area, code, message, **pids)
    return web.Response(status=status, body=body, content_type="application/json")


def _render_plain(exc: ConnectorError) -> web.Response:
    return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ConnectorError as exc:
        log.info("%s %s -> %d %s: %s", request.method, request.path, exc.status, exc.code,
                 exc.message)
        request[REQUEST_ERROR] = exc
        area = area_of(request.path) if request.app.get("dsp") else None
        return _render_dsp(request, area, exc) if area else _render_plain(exc)
