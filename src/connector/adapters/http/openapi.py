"""The management API's OpenAPI 3.1 document (``openapi.yaml`` beside this module).

Served at ``/api/openapi.json``. With ``CONNECTOR_CONTRACT_LOG=FOLDER`` in its environment the
daemon also writes each management answer (method, route, status, content type, JSON body) as
one JSON line to ``FOLDER/<pid>.jsonl``, so that a test run can check every answer it caused
against the document (tests/contract/check.py); nothing is written without the variable.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import msgspec
import yaml
from aiohttp import web
from aiohttp.typedefs import Middleware

from connector.adapters.http.errors import Handler

CONTRACT_LOG_ENV = "CONNECTOR_CONTRACT_LOG"
DOCUMENT_PATH = Path(__file__).with_name("openapi.yaml")
# Answers bigger than this are logged without their body (a list of 10,000 records would
# only slow the test run down; the schema of each record is checked on smaller lists).
LOGGED_BODY_MAX = 1 << 20


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document, as a JSON-ready dict."""
    doc: dict[str, Any] = yaml.safe_load(DOCUMENT_PATH.read_text(encoding="utf-8"))
    return doc


@functools.cache
def _encoded() -> bytes:
    return msgspec.json.encode(document())


async def serve_document(request: web.Request) -> web.Response:
    """``GET /api/openapi.json``."""
    return web.Response(body=_encoded(), content_type="application/json")


def route_of(request: web.Request) -> str | None:
    """The route template a request matched (``/api/transfers/{id}``), None if none did."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def contract_log(folder: Path) -> Middleware:
    """A middleware appending each answer under /api to ``folder/<pid>.jsonl``."""
    out = folder / f"{os.getpid()}.jsonl"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        route = route_of(request)
        if route is not None and route.startswith("/api/"):
            _append(out, request.method, route, response)
        return response

    return middleware


def _append(out: Path, method: str, route: str, response: web.StreamResponse) -> None:
    body = response.body if isinstance(response, web.Response) else None
    text = (bytes(body).decode("utf-8", "replace")
            if isinstance(body, bytes | bytearray) and len(body) <= LOGGED_BODY_MAX else None)
    line = {"method": method, "route": route, "status": response.status,
            "contentType": response.content_type, "body": text}
    with out.open("ab") as f:
        f.write(msgspec.json.encode(line) + b"\n")


def contract_log_from_env() -> Middleware | None:
    """The middleware of ``contract_log`` when ``CONNECTOR_CONTRACT_LOG`` names a folder."""
    folder = os.environ.get(CONTRACT_LOG_ENV)
    return contract_log(Path(folder)) if folder else None
