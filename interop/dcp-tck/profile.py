"""Test-only DCP TCK profile: a DCP-mode connector the DCP TCK can talk to. Never for production.

It lives outside the installed package on purpose: nothing in ``connector`` reads or imports it,
so no ``connector.toml`` can switch it on. ``interop/dcp-tck/run.py`` starts it as
``python interop/dcp-tck/profile.py DIR --tck-origin http://localhost:PORT --sts-secret S``
against a participant folder made for the run (``[identity] mode = "dcp"``, an EC P-256 key).

What it changes on a normal DCP-mode daemon, and why (interop/dcp-tck/README.md §3):
- plain HTTP, on loopback only: the TCK serves its DIDs, Credential Service and status lists over
  plain HTTP and its client trusts no self-signed certificate. DID documents are resolved with
  ``scheme="http"``, and the verifier's fetches go through ``LoopbackHttp`` (http:// only to
  127.0.0.1/localhost). The verifier itself insists on an ``https://`` CredentialService, so
  the TCK's endpoint is rewritten to https in the resolved documents and mapped back to http
  on the wire (only for ``--tck-origin``);
- ``POST /tck/sts/token``: the holder's STS the TCK asks for access tokens (EDC's STS API,
  client_credentials): it mints exactly what our connector puts in its own DSP requests, an
  access token for the ``audience`` DID and the requested ``bearer_access_scope``, wrapped in
  our self-issued token;
- ``POST /cs/credentials``: the TCK seeds the holder's credentials through the DCP Storage API
  (a CredentialMessage). That API is not implemented; this fixture writes the VC JWTs into
  ``credentials/`` (what ``connector credentials import`` would do) and checks nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import logging
import signal
import ssl
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from connector.adapters.http.credential_service import CS_PATH, GuardedHttp
from connector.authority import load_credentials
from connector.config import load_settings
from connector.core import dcp
from connector.core.errors import AuthError
from connector.daemon import Daemon
from connector.keys import load_any_signing_key
from connector.service.dcp_verifier import CredentialService, DcpVerifier, DidResolver

log = logging.getLogger("connector.dcp-tck")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ACCESS_TTL_S = 600


class LoopbackHttp(GuardedHttp):
    """GuardedHttp for a loopback test: plain http:// to loopback hosts only.

    ``https://`` URLs on ``tck_origin``'s host and port are fetched over http (see
    ``TckResolver``); everything else keeps GuardedHttp's rules (status 200, size bounds, no
    redirects, every failure an AuthError).
    """

    def __init__(self, ssl_context: ssl.SSLContext, tck_origin: str) -> None:
        super().__init__(ssl_context)
        self._tck = urlsplit(tck_origin).netloc

    async def _request(self, method: str, url: str, *, max_bytes: int, data: bytes | None = None,
                       headers: Mapping[str, str] | None = None
                       ) -> tuple[bytes, Mapping[str, str]]:
        parts = urlsplit(url)
        if parts.scheme == "https" and parts.netloc == self._tck:
            url = "http://" + url.removeprefix("https://")
        elif parts.scheme != "http" or parts.hostname not in LOOPBACK:
            raise AuthError(f"{method} {url[:200]}: the TCK profile fetches http://loopback only")
        try:
            async with self.session().request(method, url, data=data, headers=headers,
                                              allow_redirects=False) as resp:
                if resp.status != 200:
                    raise AuthError(f"{method} {url[:200]} answered {resp.status}")
                body = await resp.content.read(max_bytes + 1)
                if len(body) > max_bytes:
                    raise AuthError(f"{method} {url[:200]}: answer larger than {max_bytes} B")
                return body, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise AuthError(f"{method} {url[:200]}: {type(exc).__name__}") from exc


class TckResolver(DidResolver):
    """did:web over http; the TCK's http CredentialService endpoints are shown as https."""

    def __init__(self, http: LoopbackHttp, tck_origin: str, **kwargs: Any) -> None:
        super().__init__(http, scheme="http", **kwargs)
        self._tck_http = tck_origin.rstrip("/")

    async def document(self, did: str) -> dict[str, Any]:
        doc = await super().document(did)
        services = doc.get("service")
        if not isinstance(services, list):
            return doc
        fixed = []
        for s in services:
            endpoint = s.get("serviceEndpoint") if isinstance(s, dict) else None
            if isinstance(endpoint, str) and endpoint.startswith(self._tck_http):
                s = {**s, "serviceEndpoint": "https://" + endpoint.removeprefix("http://")}
            fixed.append(s)
        return {**doc, "service": fixed}


class DcpTckDaemon(Daemon):
    def __init__(self, root: Path, tck_origin: str, sts_secret: str) -> None:
        self._tck_origin = tck_origin
        self._sts_secret = sts_secret.encode()
        super().__init__(load_settings(root))

    def _wire_dcp(self) -> None:
        s = self.settings
        http = LoopbackHttp(self._client_ssl(), self._tck_origin)
        self.dcp_http = http
        resolver = TckResolver(http, self._tck_origin, cache_s=s.did_cache_s, clock=time.time)
        verifier = DcpVerifier(
            identity=self.identity, resolver=resolver, http=http,
            trusted_issuers=s.trusted_issuers, required_types=s.required_credentials,
            leeway_s=s.clock_leeway_s, status_cache_s=s.status_cache_s, clock=time.time)
        self.verifier = verifier
        self.credential_service = CredentialService(
            identity=self.identity, verifier=verifier, own_keys=self._own_keys,
            credentials=lambda: load_credentials(s.root), leeway_s=s.clock_leeway_s,
            clock=time.time)

    def _server_ssl(self) -> ssl.SSLContext | None:  # type: ignore[override]
        return None  # plain HTTP on loopback: the TCK's client trusts no self-signed cert

    def _public_app(self) -> web.Application:
        app = super()._public_app()
        app.router.add_post("/tck/sts/token", self._sts_token)
        app.router.add_post(f"{CS_PATH}/credentials", self._store_credentials)
        return app

    async def _sts_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        secret = str(form.get("client_secret", "")).encode()
        if form.get("grant_type") != "client_credentials" or not hmac.compare_digest(
                secret, self._sts_secret):
            return web.json_response({"error": "invalid_client"}, status=401)
        audience = str(form.get("audience", ""))
        scopes = str(form.get("bearer_access_scope", "")).split()
        if not audience.startswith("did:") or not scopes:
            return web.json_response({"error": "invalid_request"}, status=400)
        me = self.identity
        now = int(time.time())
        key = load_any_signing_key(self.settings.signing_key)
        access = dcp.issue_access_token(key, kid=me.kid, holder=me.did, verifier=audience,
                                        scopes=scopes, now=now, jti=str(uuid.uuid4()),
                                        ttl_s=ACCESS_TTL_S)
        token = me.dcp_token(audience, access, now=now)
        return web.json_response({"access_token": token, "token_type": "Bearer",
                                  "expires_in": ACCESS_TTL_S})

    async def _store_credentials(self, request: web.Request) -> web.Response:
        body = await request.json()
        folder = self.settings.root / "credentials"
        folder.mkdir(exist_ok=True)
        stored = 0
        for entry in body.get("credentials", []) if isinstance(body, dict) else []:
            payload = entry.get("payload") if isinstance(entry, dict) else None
            if isinstance(payload, str) and payload.count(".") == 2:
                name = hashlib.sha256(payload.encode()).hexdigest()[:16]
                (folder / f"tck-{name}.jwt").write_text(payload + "\n")
                stored += 1
        log.info("stored %d credential(s) the TCK issued", stored)
        return web.Response(status=200)


async def serve(root: Path, tck_origin: str, sts_secret: str) -> None:
    daemon = DcpTckDaemon(root, tck_origin, sts_secret)
    await daemon.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"dcp-tck profile ready: {daemon.settings.public_url}", flush=True)
    await stop.wait()
    await daemon.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--tck-origin", required=True, help="the TCK's callback address")
    parser.add_argument("--sts-secret", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.dir, args.tck_origin, args.sts_secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
