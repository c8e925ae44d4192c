"""The network half of the SSRF guard (README.md "Identity"): where our HTTP clients may
connect.

``core.hosts.address_refusal`` says which addresses are never connected to (link-local, where
cloud metadata services answer; unspecified; multicast; broadcast). Both clients that send
requests to addresses someone else chose apply it here:

* ``GuardedHttp`` (below), the DCP verifier's fetches: did.json, Credential Services, status
  lists;
* ``PeerClient`` (``client``), every DSP message and data-plane call to a peer, whose
  ``callbackAddress`` or data address the peer chose.

aiohttp does not resolve an IP-address host, so those are checked by the client before it
sends (``literal_refusal``); a host name is checked here, by ``GuardedResolver``, when the
connection is made; ``redirect_guard`` checks a redirect's target before it is followed.

``GuardedHttp`` is what the DCP verifier fetches with: DID documents, status lists and
presentation queries. It trusts the system CAs plus the PEM certificates given (pinned peers'
and ``[identity] tls_ca_files``), follows no redirect (a redirect is refused: did:web
documents must be served where the DID says), bounds every answer's size and time, and turns
every failure into an AuthError, so that the DSP edge answers 404 (401 on the catalogue) and
logs why.

Those URLs are chosen by the caller, so it is also an SSRF guard (README.md "Identity"; rules in
``core.hosts``). Before any request: the host must be in ``[identity] allowed_hosts`` when
that list is set, and an IP-address host must not be link-local (cloud metadata),
unspecified, multicast or broadcast. A host name is resolved once, by ``GuardedResolver``
(shared with ``PeerClient``), which refuses it if *any* of its
addresses is refused; the connection is made to exactly the addresses it checked, so a DNS
answer that changes between check and connect (rebinding) cannot get past. Private and
loopback addresses pass unless ``allowed_hosts`` excludes them.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from types import SimpleNamespace

import aiohttp
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from connector.adapters.http.session import IDLE_S, ReloadableSession
from connector.core.errors import AuthError
from connector.core.hosts import AllowedHosts, address_refusal, normal_host

# The verifier waits at most this long for a DID document, status list or presentation.
FETCH_TIMEOUT_S = 5.0


class RefusedAddress(OSError):
    """A host is, or resolved to, an address we never connect to."""


def literal_refusal(url: URL) -> str | None:
    """Why a URL whose host is an IP address is never requested (None: not refused, or the
    host is a name, which ``GuardedResolver`` checks when connecting)."""
    host = url.raw_host
    if not host:
        return None
    why = address_refusal(host)
    return None if why is None else f"{normal_host(host)} is {why}"


class GuardedResolver(AbstractResolver):
    """DNS that refuses a name if any address it resolves to is refused.

    aiohttp connects to exactly the addresses returned here (and caches them for later
    connections), so the addresses checked are the addresses connected to: a DNS answer that
    changes between check and connect (rebinding) cannot get past.
    """

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            why = address_refusal(result["host"])
            if why is not None:
                raise RefusedAddress(f"{host} resolves to {result['host']}, {why}")
        return results

    async def close(self) -> None:
        await self._inner.close()


async def _check_redirect(session: aiohttp.ClientSession, context: SimpleNamespace,
                          params: aiohttp.TraceRequestRedirectParams) -> None:
    headers = params.response.headers
    location = headers.get(hdrs.LOCATION) or headers.get(hdrs.URI)
    if location is None:
        return
    try:
        target = URL(location)
    except ValueError:
        return  # aiohttp refuses it itself
    why = literal_refusal(target)  # a relative location keeps the host already checked
    if why is not None:
        raise RefusedAddress(f"redirected to {location[:200]}: {why}")


def redirect_guard() -> aiohttp.TraceConfig:
    """A session's trace hook refusing a redirect to a refused IP address before aiohttp
    follows it (a redirect to a name is checked by ``GuardedResolver``)."""
    config = aiohttp.TraceConfig()
    config.on_request_redirect.append(_check_redirect)
    return config


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
        super().__init__(ssl_context, limit=64, keepalive_s=IDLE_S, timeout_s=FETCH_TIMEOUT_S,
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
