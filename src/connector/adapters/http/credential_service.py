"""DCP over HTTPS: our Credential Service route, and the verifier's guarded HTTP client.

``POST /cs/presentations/query`` (DCP 1.0 §Resolution API) answers a verifier's presentation
query (``service.dcp_verifier.CredentialService``); errors render as ``{"error", "message"}``
(401 for a bad token, 400 for a malformed query, 501 for a presentation definition).

``GuardedHttp`` is what the DCP verifier fetches with: DID documents, status lists and
presentation queries. It trusts the system CAs plus the PEM certificates given (pinned peers'
and ``[identity] tls_ca_files``), follows no redirect (a redirect is refused: did:web
documents must be served where the DID says), bounds every answer's size and time, and turns
every failure into an AuthError, so that the DSP edge answers 404 and logs why.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from connector.adapters.http.session import ReloadableSession
from connector.core.errors import AuthError, MalformedMessage
from connector.service.dcp_verifier import CredentialService

# The verifier waits at most this long for a DID document, status list or presentation.
FETCH_TIMEOUT_S = 5.0
CS_PATH = "/cs"
MAX_QUERY_BYTES = 64 * 1024


class GuardedHttp(ReloadableSession):
    """The ``service.dcp_verifier.Http`` of the daemon (one keep-alive session)."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        super().__init__(ssl_context, limit=64, keepalive_s=30, timeout_s=FETCH_TIMEOUT_S)

    async def _request(self, method: str, url: str, *, max_bytes: int, data: bytes | None = None,
                       headers: Mapping[str, str] | None = None
                       ) -> tuple[bytes, Mapping[str, str]]:
        if not url.startswith("https://"):
            raise AuthError(f"{method} {url[:200]}: only https URLs are fetched")
        try:
            async with self.session().request(method, url, data=data, headers=headers,
                                              allow_redirects=False) as resp:
                if resp.status != 200:
                    raise AuthError(f"{method} {url[:200]} answered {resp.status}")
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise AuthError(f"{method} {url[:200]}: answer larger than {max_bytes} B")
                body = await resp.content.read(max_bytes + 1)
                if len(body) > max_bytes:
                    raise AuthError(f"{method} {url[:200]}: answer larger than {max_bytes} B")
                return body, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise AuthError(f"{method} {url[:200]}: {type(exc).__name__}") from exc

    async def get(self, url: str, *, max_bytes: int) -> tuple[bytes, Mapping[str, str]]:
        return await self._request("GET", url, max_bytes=max_bytes)

    async def post_json(self, url: str, body: bytes, *, authorization: str,
                        max_bytes: int) -> bytes:
        headers = {"Authorization": authorization, "Content-Type": "application/json"}
        answer, _ = await self._request("POST", url, max_bytes=max_bytes, data=body,
                                        headers=headers)
        return answer


class CredentialServiceRoutes:
    """``POST /cs/presentations/query`` on the public (HTTPS) app."""

    def __init__(self, service: CredentialService) -> None:
        self._service = service

    async def query(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_QUERY_BYTES:
            raise MalformedMessage("query too large")
        authorization = request.headers.get("Authorization")
        raw = await request.content.read(MAX_QUERY_BYTES + 1)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None  # the token is checked first; then this is a 400
        answer = await self._service.query(authorization, body)
        return web.json_response(answer)

    def register(self, app: web.Application) -> None:
        app.router.add_post(f"{CS_PATH}/presentations/query", self.query)
