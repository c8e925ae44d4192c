"""Talking to peers over HTTPS: signed DSP requests, catalogue fetches and data pulls.

One ``aiohttp.ClientSession`` per daemon keeps TLS connections alive (a new TLS connection
costs ~1.2 ms of CPU on this class of machine, a reused one ~12 µs; docs/interop-notes.md §6).
Peers' self-signed certificates pinned in ``trust/`` are added as trust anchors beside the
system ones. Errors are translated into ``PeerError`` where they enter.

The addresses come from peers (a ``callbackAddress``, a data address), so requests go
through the SSRF guard of ``adapters.http.guard``: a URL whose host is a
link-local (cloud metadata), unspecified, multicast or broadcast IP address is refused before
anything is sent, a host name resolving to one is refused when connecting (``GuardedResolver``,
so DNS rebinding cannot get past), and so is a redirect to one. Loopback and private addresses
pass. A refusal is a final ``PeerError`` (not retried by the outbox) saying why.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from connector.adapters.http.guard import (
    GuardedResolver,
    RefusedAddress,
    literal_refusal,
    redirect_guard,
)
from connector.adapters.http.session import IDLE_S, ReloadableSession
from connector.core import codec
from connector.core.errors import PeerError
from connector.service.auth import Identity
from connector.service.store import OutboxItem

# A peer that does not answer a control message within 10 s is retried later by the outbox.
REQUEST_TIMEOUT_S = 10.0
JSON = "application/json"


def client_ssl_context(pinned_pems: Iterable[str]) -> ssl.SSLContext:
    """System trust plus the pinned peers' certificates."""
    ctx = ssl.create_default_context()
    pems = "\n".join(p for p in pinned_pems if p)
    if pems:
        ctx.load_verify_locations(cadata=pems)
    return ctx


def _target(what: str, url: str) -> URL:
    """The URL to request, parsed once; a final PeerError if its host is a refused address."""
    try:
        target = URL(url)
    except (TypeError, ValueError):
        raise PeerError(f"{what}: not a URL", final=True) from None
    why = literal_refusal(target)
    if why is not None:
        raise PeerError(f"{what}: refused, {why}", final=True)
    return target


def _failure(what: str, exc: BaseException) -> PeerError:
    """A network failure as a PeerError; the guard's refusals are final."""
    refused = exc if isinstance(exc, RefusedAddress) else None
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error,
                                                                   RefusedAddress):
        refused = exc.os_error
    if refused is not None:
        return PeerError(f"{what}: refused, {refused}", final=True)
    return PeerError(f"{what}: {type(exc).__name__}: {exc}")


# The header of a push body saying how many records the consumer already holds (0: all of it).
PUSH_OFFSET = "Push-Offset"


class PeerClient(ReloadableSession):
    """``resolver`` makes the DNS resolver that ``GuardedResolver`` wraps (default: aiohttp's
    threaded getaddrinfo, which holds nothing to close)."""

    def __init__(self, identity: Identity, ssl_context: ssl.SSLContext, *,
                 resolver: Callable[[], AbstractResolver] = ThreadedResolver,
                 on_data: Callable[[bytes], None] | None = None) -> None:
        super().__init__(ssl_context, limit=256, keepalive_s=IDLE_S, timeout_s=REQUEST_TIMEOUT_S,
                         resolver=lambda: GuardedResolver(resolver()),
                         trace_configs=lambda: [redirect_guard()])
        self._identity = identity
        self._on_data = on_data  # each chunk of records a pull receives (metrics)

    async def post(self, url: str, audience: str, body: bytes) -> tuple[int, bytes]:
        what = f"POST {url}"
        target = _target(what, url)
        headers = {"Authorization": self._identity.authorization(audience, body),
                   "Content-Type": JSON}
        try:
            async with self.session().post(target, data=body, headers=headers) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _failure(what, exc) from exc

    async def get(self, url: str, audience: str) -> tuple[int, bytes]:
        what = f"GET {url}"
        target = _target(what, url)
        headers = {"Authorization": self._identity.authorization(audience, b"")}
        try:
            async with self.session().get(target, headers=headers) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _failure(what, exc) from exc

    async def deliver(self, item: OutboxItem) -> bytes:
        """Send one outbox item; any non-2xx becomes a PeerError carrying the status."""
        status, body = await self.post(item.url, item.audience, item.body)
        if status >= 300:
            raise PeerError(f"POST {item.url} answered {status}: {_snippet(body)}",
                            peer_status=status, peer_reason=_reason(body))
        return body

    async def send_initial(self, url: str, audience: str, body: bytes) -> bytes:
        """POST a process-creating message; anything but 201 is a PeerError."""
        status, raw = await self.post(url, audience, body)
        if status not in (200, 201):  # EDC acknowledges creations with 200
            raise PeerError(f"POST {url} answered {status}: {_snippet(raw)}", peer_status=status)
        return raw

    async def catalog(self, dsp_base: str, audience: str) -> dict[str, Any]:
        """DSP 2025-1 §CAT 3.2: POST <base>/catalog/request."""
        body = codec.encode(codec_catalog_request())
        status, raw = await self.post(f"{dsp_base.rstrip('/')}/catalog/request", audience, body)
        if status != 200:
            raise PeerError(f"the provider refused our catalog request ({status}): "
                            f"{_snippet(raw)}",
                            peer_status=status)
        return codec.decode_json(raw)

    async def dataset_refusal(self, dsp_base: str, audience: str, dataset_id: str) -> str | None:
        """Why the provider shows us no offer of ``dataset_id`` (its answer to a dataset
        request, DSP 2025-1 §CAT 3.3), or None when it shows one after all."""
        url = f"{dsp_base.rstrip('/')}/catalog/datasets/{quote(dataset_id, safe='')}"
        status, raw = await self.get(url, audience)
        return None if status == 200 else _snippet(raw)

    async def pull(self, endpoint: str, authorization: str, offset: int = 0
                   ) -> AsyncGenerator[bytes, None]:
        """Stream the records behind an HTTP-pull data address, from record ``offset`` on."""
        headers = {"Authorization": authorization}
        if offset:
            endpoint = f"{endpoint}?offset={offset}"
        target = _target("data pull", endpoint)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        try:
            async with self.session().get(target, headers=headers, timeout=timeout) as resp:
                if resp.status != 200:
                    raw = await resp.read()
                    raise PeerError(f"data pull answered {resp.status}: {_snippet(raw)}",
                                    peer_status=resp.status, peer_reason=_reason(raw))
                async for chunk in resp.content.iter_any():  # what arrived, without copying
                    if self._on_data is not None:
                        self._on_data(chunk)
                    yield chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _failure("data pull", exc) from exc

    async def _exchange(self, what: str, method: str, url: str, *, authorization: str,
                        data: Any = None, content_type: str | None = None,
                        timeout: aiohttp.ClientTimeout | None = None,
                        extra_headers: dict[str, str] | None = None) -> bytes:
        """One request to a peer's data plane; anything but 200 or a network failure is a
        PeerError naming ``what`` (errors are translated where they enter)."""
        target = _target(what, url)
        headers = {"Authorization": authorization, **(extra_headers or {})}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            async with self.session().request(method, target, data=data, headers=headers,
                                              timeout=timeout) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise PeerError(f"{what} answered {resp.status}: {_snippet(raw)}",
                                    peer_status=resp.status, peer_reason=_reason(raw))
                return raw
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _failure(what, exc) from exc

    async def push(self, endpoint: str, authorization: str,
                   chunks: AsyncGenerator[bytes, None], *, offset: int = 0) -> None:
        """POST a push transfer's records to the consumer's endpoint as one streamed body;
        ``offset`` records are already there (``Push-Offset``, a resume after a cut)."""
        await self._exchange("push", "POST", endpoint, authorization=authorization, data=chunks,
                             content_type="application/x-ndjson",
                             timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
                             extra_headers={PUSH_OFFSET: str(offset)})

    async def push_offset(self, endpoint: str, authorization: str) -> int:
        """How many whole records of a push the consumer holds (where a resume starts)."""
        raw = await self._exchange("push offset", "GET", endpoint, authorization=authorization)
        records = codec.decode_json(raw).get("records")
        if not isinstance(records, int) or isinstance(records, bool) or records < 0:
            raise PeerError(f"push offset: not a record count: {_snippet(raw)}")
        return records

    async def push_summary(self, endpoint: str, authorization: str,
                           summary: dict[str, Any]) -> None:
        """Tell the consumer what the push held; it answers 409 if its copy differs."""
        await self._exchange("push summary", "POST", f"{endpoint.rstrip('/')}/summary",
                             authorization=authorization, data=codec.encode_json(summary),
                             content_type=JSON)

    async def data_summary(self, endpoint: str, authorization: str) -> dict[str, Any]:
        """The provider's record count and SHA-256 for the whole stream."""
        raw = await self._exchange("data summary", "GET", f"{endpoint.rstrip('/')}/summary",
                                   authorization=authorization)
        return codec.decode_json(raw)

    async def refresh_data_token(self, endpoint: str, authorization: str) -> str:
        """Exchange a data token for a fresh one at the provider's data plane."""
        raw = await self._exchange("token refresh", "POST", f"{endpoint.rstrip('/')}/token",
                                   authorization=authorization)
        return str(codec.decode_json(raw)["token"])


def codec_catalog_request() -> Any:
    from connector.core.messages import CatalogRequestMessage

    return CatalogRequestMessage()


def _dsp_error(body: bytes) -> tuple[str, str] | None:
    """(code, reasons joined) of a DSP error body (DSP 2025-1 §CAT/§CN/§TP error types), or
    of a data plane's ``{"error", "message"}``."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("reason"), list | str):
        reasons = doc["reason"] if isinstance(doc["reason"], list) else [doc["reason"]]
        text = "; ".join(str(r.get("@value", r) if isinstance(r, dict) else r)
                         for r in reasons)
        return str(doc.get("code") or "refused"), text
    if isinstance(doc, dict) and isinstance(doc.get("message"), str) and "error" in doc:
        return str(doc["error"]), doc["message"]
    return None


def _reason(body: bytes, limit: int = 600) -> str | None:
    """The reason a DSP error body gives, if it is one."""
    found = _dsp_error(body)
    return found[1][:limit] if found is not None and found[1] else None


def _snippet(body: bytes, limit: int = 300) -> str:
    """A peer's error body as a sentence: a DSP error's ``code: reason; reason``, else the
    start of the body."""
    found = _dsp_error(body)
    if found is not None:
        return f"{found[0]}: {found[1]}"[:limit * 2]
    return body[:limit].decode("utf-8", "replace")
