"""DCP over HTTPS: our Credential Service route, and the verifier's guarded HTTP client.

``POST /cs/presentations/query`` (DCP 1.0 §Resolution API) answers a verifier's presentation
query (``service.dcp_verifier.CredentialService``); errors render as ``{"error", "message"}``
(401 for a bad token, 400 for a malformed query, 501 for a presentation definition).

``GuardedHttp`` is what the DCP verifier fetches with: DID documents, status lists and
presentation queries. It trusts the system CAs plus the PEM certificates given (pinned peers'
and ``[identity] tls_ca_files``), follows no redirect (a redirect is refused: did:web
documents must be served where the DID says), bounds every answer's size and time, and turns
every failure into an AuthError, so that the DSP edge answers 404 (401 on the catalogue) and
logs why.

Those URLs are chosen by the caller, so it is also an SSRF guard (issue #4, rules in
``core.hosts``). Before any request: the host must be in ``[identity] allowed_hosts`` when
that list is set, and an IP-address host must not be link-local (cloud metadata),
unspecified, multicast or broadcast. A host name is resolved once, by ``GuardedResolver``
(``adapters.http.guard``, shared with ``PeerClient``), which refuses it if *any* of its
addresses is refused; the connection is made to exactly the addresses it checked, so a DNS
answer that changes between check and connect (rebinding) cannot get past. Private and
loopback addresses pass unless ``allowed_hosts`` excludes them.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterable, Mapping

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from connector.adapters.http.guard import GuardedResolver, RefusedAddress
from connector.adapters.http.session import ReloadableSession
from connector.core.errors import AuthError, MalformedMessage
from connector.core.hosts import AllowedHosts, address_refusal, normal_host
from connector.service.dcp_verifier import CredentialService

# The verifier waits at most this long for a DID document, status list or presentation.
FETCH_TIMEOUT_S = 5.0
CS_PATH = "/cs"
MAX_QUERY_BYTES = 64 * 1024


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GuardedHttp(ReloadableSession):
    """The ``service.dcp_verifier.Http`` of the daemon (one keep-alive session).

    ``allowed_hosts``: the ``[identity] allowed_hosts`` entries (empty: any host whose
    addresses are not refused). ``resolver`` makes the DNS resolver that ``GuardedResolver``
    wraps (default: aiohttp's threaded getaddrinfo, which holds nothing to close).
    """

    def __init__(self, ssl_context: ssl.SSLContext, *, allowed_hosts: Iterable[str] = (),
                 resolver: Callable[[], AbstractResolver] = ThreadedResolver) -> None:
        super().__init__(ssl_context, limit=64, keepalive_s=30, timeout_s=FETCH_TIMEOUT_S,
                         resolver=lambda: GuardedResolver(resolver()))
        self._allowed = AllowedHosts(allowed_hosts)

    def set_allowed_hosts(self, allowed_hosts: Iterable[str]) -> None:
        """Take a new ``[identity] allowed_hosts`` (connector.toml changed); next fetch on."""
        self._allowed = AllowedHosts(allowed_hosts)

    def _target(self, method: str, url: str) -> URL:
        """The URL to request, parsed once; AuthError if no request may go there."""
        shown = f"{method} {url[:200]}"
        try:
            target = URL(url)
        except (TypeError, ValueError):
            raise AuthError(f"{shown}: not a URL") from None
        if target.scheme != "https" or not target.raw_host or target.port is None:
            raise AuthError(f"{shown}: only https URLs are fetched")
        host, port = normal_host(target.raw_host), target.port
        why = address_refusal(host)
        if why is not None:
            raise AuthError(f"{shown}: refused, {host} is {why}")
        if not self._allowed.allows(host, port):
            raise AuthError(f"{shown}: refused, host {_host_port(host, port)} is not in "
                            f"[identity] allowed_hosts")
        return target

    async def _request(self, method: str, url: str, *, max_bytes: int, data: bytes | None = None,
                       headers: Mapping[str, str] | None = None
                       ) -> tuple[bytes, Mapping[str, str]]:
        target = self._target(method, url)
        try:
            return await self._send(method, target, max_bytes=max_bytes, data=data,
                                    headers=headers)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                raise AuthError(f"{method} {url[:200]}: refused, {exc.os_error}") from exc
            raise AuthError(f"{method} {url[:200]}: {type(exc).__name__}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise AuthError(f"{method} {url[:200]}: {type(exc).__name__}") from exc

    async def _send(self, method: str, target: URL, *, max_bytes: int, data: bytes | None,
                    headers: Mapping[str, str] | None) -> tuple[bytes, Mapping[str, str]]:
        """The request itself, to a URL ``_target`` let through."""
        shown = f"{method} {str(target)[:200]}"
        async with self.session().request(method, target, data=data, headers=headers,
                                          allow_redirects=False) as resp:
            if resp.status != 200:
                raise AuthError(f"{shown} answered {resp.status}")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise AuthError(f"{shown}: answer larger than {max_bytes} B")
            body = await resp.content.read(max_bytes + 1)
            if len(body) > max_bytes:
                raise AuthError(f"{shown}: answer larger than {max_bytes} B")
            return body, dict(resp.headers)

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
            raise MalformedMessage("query too large", area=None)
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
