"""DCP over HTTPS: our Credential Service route.

``POST /cs/presentations/query`` (DCP 1.0 §Resolution API) answers a verifier's presentation
query (``service.dcp_verifier.CredentialService``); errors render as ``{"error", "message"}``
(401 for a bad token, 400 for a malformed query, 501 for a presentation definition).
The verifier's own fetches go through ``adapters.http.guard.GuardedHttp``.
"""

from __future__ import annotations

import json

from aiohttp import web

from connector.core.codec import within_depth
from connector.core.errors import MalformedMessage
from connector.service.dcp_verifier import CredentialService

CS_PATH = "/cs"
MAX_QUERY_BYTES = 64 * 1024


class CredentialServiceRoutes:
    """``POST /cs/presentations/query`` on the public (HTTPS) app."""

    def __init__(self, service: CredentialService) -> None:
        self._service = service

    async def query(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_QUERY_BYTES:
            raise MalformedMessage("query too large", area=None)
        authorization = request.headers.get("Authorization")
        raw = await request.content.read(MAX_QUERY_BYTES + 1)
        try:
            body = json.loads(within_depth(raw))
        except ValueError:
            body = None  # the token is checked first; then this is a 400
        answer = await self._service.query(authorization, body)
        return web.json_response(answer)

    def register(self, app: web.Application) -> None:
        app.router.add_post(f"{CS_PATH}/presentations/query", self.query)
