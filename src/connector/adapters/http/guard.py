"""The network half of the SSRF guard (README.md "Identity"): where our HTTP clients may
connect.

``core.hosts.address_refusal`` says which addresses are never connected to (link-local, where
cloud metadata services answer; unspecified; multicast; broadcast). Both clients that send
requests to addresses someone else chose apply it here:

* ``GuardedHttp`` (``credential_service``), the DCP verifier's fetches: did.json, Credential
  Services, status lists;
* ``PeerClient`` (``client``), every DSP message and data-plane call to a peer, whose
  ``callbackAddress`` or data address the peer chose.

aiohttp does not resolve an IP-address host, so those are checked by the client before it
sends (``literal_refusal``); a host name is checked here, by ``GuardedResolver``, when the
connection is made; ``redirect_guard`` checks a redirect's target before it is followed.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import aiohttp
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from connector.core.hosts import address_refusal, normal_host


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
