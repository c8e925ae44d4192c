"""One middleware renders every error of the tree in the shape its edge requires.

DSP 2025-1 §CN/§TP HTTPS bindings: errors on negotiation and transfer endpoints are
``ContractNegotiationError`` / ``TransferError`` bodies carrying both pids; an unauthorised
caller gets a 404 there, so that existence is not revealed. Catalogue errors are
``CatalogError`` bodies. The management API answers ``{"error", "message"}``.

Every error of the tree is answered with the status its class states (``core/errors.py``).
Anything else escaping a handler is a bug: it is answered 500 in the same shape, with an
error id that the log line carrying its traceback repeats, and nothing of its text. A caller
that hung up before the answer (``ConnectionError`` with the transport closed) gets one quiet
log line instead of aiohttp's traceback. ``connector.logs`` escapes the outside values (the
path, a peer's reason) that reach a line.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from connector import logs
from connector.core import codec
from connector.core.errors import (
    Area,
    AuthError,
    CatalogError,
    ConnectorError,
    InternalError,
    InvalidParameter,
    MalformedMessage,
    ModesDiffer,
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
        area = (exc.area or area) if area is not Area.CATALOG else area
    # A caller in the other [identity] mode is told so (its signature verified, and the
    # answer is the same whatever the pid: it reveals no process).
    if isinstance(exc, AuthError) and not isinstance(exc, ModesDiffer) and (
            area is not Area.CATALOG):
        status, code, message = 404, UnknownProcess.code, "not found"
    if isinstance(exc, CatalogError):
        area = Area.CATALOG
    body = dsp_error_body(area, code, message, **pids)
    return web.Response(status=status, body=body, content_type="application/json")


def _render_plain(exc: ConnectorError) -> web.Response:
    return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status)


def _render(request: web.Request, exc: ConnectorError) -> web.Response:
    area = area_of(request.path) if request.app.get("dsp") else None
    return _render_dsp(request, area, exc) if area else _render_plain(exc)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def refuse_nul(request: web.Request) -> None:
    """U+0000 in the path or a query parameter is the caller's mistake, refused before any
    handler: no identifier or parameter of ours holds it (the JSON bodies are checked as
    they are decoded, ``codec.without_nul``), and PostgreSQL's ``text`` cannot."""
    if "\x00" in request.path or any("\x00" in k + v for k, v in request.query.items()):
        message = "U+0000 (NUL) in the path or a parameter"
        area = area_of(request.path) if request.app.get("dsp") else None
        raise MalformedMessage(message, area=area) if area else InvalidParameter(message)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    logs.bind(process_id=request.match_info.get("pid") or request.match_info.get("id"))
    try:
        refuse_nul(request)
        return await handler(request)
    except ConnectorError as exc:
        log.info("%s %s -> %d %s: %s", request.method, request.path, exc.status, exc.code,
                 exc.message, extra={"status": exc.status, "reason": exc.message})
        request[REQUEST_ERROR] = exc
        return _render(request, exc)
    except web.HTTPException:
        raise  # aiohttp's own answers: 404 no route, 405, 413 too large
    except ConnectionError as exc:
        if not _client_gone(request):
            return _internal(request, exc)
        log.info("%s %r: the caller disconnected before the answer (%s)", request.method,
                 request.path, type(exc).__name__)
        return web.Response(status=499)  # never sent: aiohttp sees the closed transport
    except Exception as exc:
        return _internal(request, exc)


def _internal(request: web.Request, exc: Exception) -> web.Response:
    """A bug: 500 with an id, the traceback logged under the same id."""
    error_id = secrets.token_hex(8)
    log.error("%s %r -> 500 internal error %s", request.method, request.path, error_id,
              exc_info=exc, extra={"error_id": error_id})
    return _render(request, InternalError(f"internal error {error_id}"))
