"""Test-only "iam-mock interop" profile: our connector as a DSP peer of a local Eclipse EDC.

Never for production. Like ``interop/tck/profile.py`` it lives outside the installed package:
nothing in ``connector`` imports it, so no ``connector.toml`` can switch it on.
``interop/edc/run.py`` starts it as::

    python interop/edc/peer.py DIR --edc ID=DSP_BASE [--edc ID=DSP_BASE ...]

where ``DSP_BASE`` is the EDC participant's versioned DSP base (for example
``http://127.0.0.1:19194/protocol/2025-1``).

What it changes in a normal daemon (serving ``datasets/`` and ``policies/`` of DIR with the
normal automatic reactions):

- identity: EDC's ``iam-mock`` extension instead of self-issued tokens. Every DSP request we
  send carries the raw JSON ``{"region": "any", "audience": <aud>, "clientId": <our id>}``;
  an incoming raw JSON with a ``clientId`` among the configured EDC ids (and a ``region``) is
  accepted as that participant, with the attribute ``membership=active``;
- plain HTTP on loopback: EDC's HTTP client (OkHttp on the JVM trust store) trusts no
  self-signed certificate, and importing one into a JVM trust store is out of scope here;
- EDC as a pinned provider for the management API: EDC's DSP base is ``<root>/protocol/2025-1``
  and its id is no DID, so it cannot live in ``trust/`` (``url`` must be https, ``did`` a DID,
  ``keys`` non-empty) and ``<root> + /dsp/2025-1`` would be the wrong base;
- lenient edges for what EDC sends (README "Differences"): a catalogue request whose
  ``filter`` is EDC's paging ``QuerySpec``; a TransferStart data address whose endpoint and
  token are endpoint properties named by EDC IRIs;
- what we send EDC: our TransferStart also names endpoint, token and authType by EDC IRIs
  (else EDC's EDR is empty), and our pulls send the raw EDR token (EDC refuses ``Bearer``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

import connector.daemon as daemon_module
from connector.adapters.http.client import PeerClient
from connector.adapters.http.dataplane import DataPlane
from connector.adapters.http.dsp import DspDeps, DspRoutes
from connector.adapters.http.errors import error_middleware
from connector.adapters.http.management import ManagementApi
from connector.config import load_settings
from connector.core import codec
from connector.core.errors import Area, AuthError, CatalogError, PeerError
from connector.core.messages import (
    CatalogRequestMessage,
    DataAddress,
    EndpointProperty,
    TransferStartMessage,
)
from connector.daemon import Daemon
from connector.service.auth import Identity, Verifier
from connector.service.catalog import Claims
from connector.service.store import OutboxItem

log = logging.getLogger("connector.edc-interop")
EDC_VOCAB = "https://w3id.org/edc/v0.0.1/ns/"
# What a caller authenticated by iam-mock is known to be: the example dataset's members-only
# policy asks for exactly this.
EDC_ATTRIBUTES: Mapping[str, str] = {"membership": "active"}
MAX_HEADER = 4096


# -- identity ----------------------------------------------------------------------------------


def iam_mock_authorization(client_id: str, audience: str, region: str = "any") -> str:
    """The Authorization value EDC's iam-mock accepts: a JSON object, raw (no ``Bearer``)."""
    return json.dumps({"region": region, "audience": audience, "clientId": client_id},
                      separators=(",", ":"))


def iam_mock_client_id(authorization: str | None) -> str:
    """The ``clientId`` of an iam-mock Authorization value; AuthError if it is not one.

    iam-mock itself answers 500 to anything but a JSON object with ``region`` and ``clientId``;
    we answer 401. A ``Bearer`` prefix is tolerated (EDC never sends one).
    """
    if not authorization or len(authorization) > MAX_HEADER:
        raise AuthError("missing or oversized Authorization header")
    value = authorization.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise AuthError("Authorization is not an iam-mock JSON object") from exc
    if not isinstance(doc, dict) or "region" not in doc:
        raise AuthError("Authorization is not an iam-mock JSON object")
    client_id = doc.get("clientId")
    if not isinstance(client_id, str) or not client_id:
        raise AuthError("iam-mock Authorization without clientId")
    return client_id


class IamMockIdentity(Identity):
    """Signs nothing: names us by our participant id in iam-mock's JSON form."""

    def authorization(self, audience: str) -> str:
        return iam_mock_authorization(self.did, audience)


class IamMockVerifier(Verifier):
    """Accepts iam-mock JSON from the configured EDC participant ids, and nobody else."""

    def __init__(self, edc_ids: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.edc_ids = frozenset(edc_ids)

    def verify(self, authorization: str | None) -> Claims:
        client_id = iam_mock_client_id(authorization)
        if client_id not in self.edc_ids:
            raise AuthError("iam-mock clientId is not a configured EDC participant")
        return Claims(participant_id=client_id, attributes=dict(EDC_ATTRIBUTES))


# -- lenient edges for what EDC sends ---------------------------------------------------------


def is_paging_only(filters: Sequence[Any] | None) -> bool:
    """Whether a catalogue ``filter`` is only EDC's paging QuerySpec (no filter expression).

    EDC's consumer always sends ``[{"@type": "QuerySpec", "offset": 0, "limit": 50,
    "sortOrder": "ASC", "filterExpression": []}]``; our catalogue is small, so paging it away
    is safe. A QuerySpec with a real filter expression is still refused.
    """
    return all(isinstance(f, dict) and f.get("@type") in ("QuerySpec", EDC_VOCAB + "QuerySpec")
               and not f.get("filterExpression") for f in filters or [])


def _edc_property(address: DataAddress, local: str) -> str | None:
    for name in (local, EDC_VOCAB + local, "edc:" + local):
        value = address.property(name)
        if value is not None:
            return value
    return None


def normalise_data_address(address: DataAddress | None) -> DataAddress | None:
    """EDC's HTTP-pull address in our form: top-level ``endpoint``, ``authorization`` property.

    EDC 0.14 sends no top-level ``endpoint``; the endpoint and the token are endpoint
    properties named ``https://w3id.org/edc/v0.0.1/ns/endpoint`` / ``…/authorization``.
    """
    if address is None:
        return None
    endpoint = address.endpoint or _edc_property(address, "endpoint")
    token = _edc_property(address, "authorization")
    props = [p for p in address.endpoint_properties if p.name != "authorization"]
    if token is not None:
        props.insert(0, EndpointProperty(name="authorization", value=token))
    return DataAddress(endpoint_type=address.endpoint_type, endpoint=endpoint,
                       endpoint_properties=props)


class InteropDspRoutes(DspRoutes):
    async def catalog_request(self, request: web.Request) -> web.Response:
        claims = self.claims(request)
        msg = codec.decode(await self.body(request, Area.CATALOG), CatalogRequestMessage,
                           area=Area.CATALOG)
        if msg.filter and not is_paging_only(msg.filter):
            raise CatalogError("catalog filters are not supported", status=400)
        doc = self.d.catalog().catalog(claims)
        return web.Response(body=codec.encode_json(doc), content_type="application/json")

    def transfer_message(self, kind: type[Any]) -> Callable[[web.Request],
                                                            Awaitable[web.Response]]:
        if kind is not TransferStartMessage:
            return super().transfer_message(kind)

        async def start(request: web.Request) -> web.Response:
            claims = self.claims(request)
            msg = codec.decode(await self.body(request, Area.TRANSFER), TransferStartMessage,
                               area=Area.TRANSFER)
            fixed = TransferStartMessage(consumer_pid=msg.consumer_pid,
                                         provider_pid=msg.provider_pid,
                                         data_address=normalise_data_address(msg.data_address))
            record = await self.d.transfers.on_message(request.match_info["pid"], fixed, claims)
            return web.Response(body=codec.encode(record.ack()), content_type="application/json")
        return start


def with_edc_properties(body: bytes) -> bytes:
    """A TransferStartMessage whose pull address EDC can read (unchanged if it has none).

    EDC builds its EDR only from endpoint properties named by EDC IRIs (``…/ns/endpoint``,
    ``…/ns/authorization``, ``…/ns/authType``); our top-level ``endpoint`` and plain
    ``authorization`` are dropped, and its EDR comes out empty. The plain ones stay.
    """
    doc = json.loads(body)
    address = doc.get("dataAddress") if isinstance(doc, dict) else None
    if not isinstance(address, dict):
        return body
    props = list(address.get("endpointProperties") or [])
    named = {p.get("name"): p.get("value") for p in props if isinstance(p, dict)}
    extra = {"endpoint": address.get("endpoint"), "authorization": named.get("authorization"),
             "authType": named.get("authType")}
    for local, value in extra.items():
        if isinstance(value, str) and EDC_VOCAB + local not in named:
            props.append({"@type": "EndpointProperty", "name": EDC_VOCAB + local,
                          "value": value})
    address["endpointProperties"] = props
    return json.dumps(doc).encode()


class EdcPeerClient(PeerClient):
    """PeerClient with two EDC adaptations on the wire (README "Differences"):

    - pulls send ``Authorization: <token>``: EDC's public API refuses ``Bearer <token>``
      (403 "Failed to decode token");
    - TransferStart messages also name the endpoint and token by EDC IRIs.
    """

    async def deliver(self, item: OutboxItem) -> bytes:
        if item.url.endswith("/start"):
            item = msgspec.structs.replace(item, body=with_edc_properties(item.body))
        return await super().deliver(item)

    async def pull(self, endpoint: str, token: str, offset: int = 0
                   ) -> AsyncGenerator[bytes, None]:
        if offset:
            endpoint = f"{endpoint}?offset={offset}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        try:
            async with self.session().get(endpoint, headers={"Authorization": token},
                                          timeout=timeout) as resp:
                if resp.status != 200:
                    body = (await resp.read())[:300].decode("utf-8", "replace")
                    raise PeerError(f"data pull answered {resp.status}: {body}",
                                    peer_status=resp.status)
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    yield chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError(f"data pull: {type(exc).__name__}: {exc}") from exc


# -- EDC as a provider for the management API --------------------------------------------------


class InteropManagementApi(ManagementApi):
    """Resolves an EDC participant, given by its DSP base (or the root before /2025-1)."""

    def __init__(self, *, edc_peers: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._edc = {base.rstrip("/"): pid for pid, base in edc_peers.items()}

    def _provider(self, url: str) -> tuple[str, str]:
        url = url.rstrip("/")
        for base, pid in self._edc.items():
            if url in (base, base.rsplit("/", 1)[0]):
                return base, pid
        return super()._provider(url)


@contextmanager
def _management_api_class(factory: Callable[..., ManagementApi]) -> Iterator[None]:
    """Daemon.start builds ``ManagementApi`` by name and offers no hook: swap it for start."""
    saved = daemon_module.ManagementApi
    daemon_module.ManagementApi = factory  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        daemon_module.ManagementApi = saved  # type: ignore[misc]


# -- the daemon ---------------------------------------------------------------------------------


class EdcPeerDaemon(Daemon):
    def __init__(self, root: Path, edc_peers: Mapping[str, str]) -> None:
        super().__init__(load_settings(root))
        s = self.settings
        self.edc_peers = dict(edc_peers)  # participant id -> versioned DSP base
        self.identity = IamMockIdentity(did=s.did, kid=s.signing_kid,
                                        key=self.identity._key, ttl_s=s.token_ttl_s,
                                        clock=time.time)
        self.verifier = IamMockVerifier(list(self.edc_peers), did=s.did,
                                        peers=self.folder.peers, leeway_s=s.clock_leeway_s,
                                        clock=time.time)
        self.client = EdcPeerClient(self.identity, self._client_ssl())

    def _server_ssl(self) -> ssl.SSLContext | None:  # type: ignore[override]
        return None  # plain HTTP on loopback: EDC's JVM client trusts no self-signed cert

    def _public_app(self) -> web.Application:
        app = web.Application(middlewares=[error_middleware], client_max_size=1024 * 1024)
        app["dsp"] = True
        did_doc = json.loads((self.settings.root / "did.json").read_text())
        InteropDspRoutes(DspDeps(verifier=self.verifier, catalog=lambda: self.folder.catalog,
                                 negotiations=self.negotiations, transfers=self.transfers,
                                 did_document=did_doc)).register(app)
        DataPlane(self.transfers, lambda: self.folder.datasets).register(app)
        return app

    def claims_for(self, did: str) -> Claims:
        if did in self.edc_peers:  # the data plane re-evaluates the agreement for its assignee
            return Claims(participant_id=did, attributes=dict(EDC_ATTRIBUTES))
        return super().claims_for(did)

    async def start(self) -> None:
        def factory(**kwargs: Any) -> ManagementApi:
            return InteropManagementApi(edc_peers=self.edc_peers, **kwargs)

        with _management_api_class(factory):
            await super().start()


def parse_edc(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for value in values:
        pid, sep, base = value.partition("=")
        if not sep or not pid or not base.startswith("http"):
            raise SystemExit(f"--edc {value!r}: expected ID=DSP_BASE")
        out[pid] = base.rstrip("/")
    return out


async def serve(root: Path, edc_peers: Mapping[str, str]) -> None:
    daemon = EdcPeerDaemon(root, edc_peers)
    await daemon.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"edc-interop profile ready: {daemon.settings.public_url} "
          f"(management {daemon.settings.management_url})", flush=True)
    await stop.wait()
    await daemon.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--edc", action="append", default=[], metavar="ID=DSP_BASE",
                        help="an EDC participant id and its versioned DSP base")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.dir, parse_edc(args.edc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
