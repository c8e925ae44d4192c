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
  on the wire (only for ``--tck-origin``); both live in ``interop/common/loopback_dcp.py``;
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
import logging
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from connector.adapters.http.credential_service import CS_PATH
from connector.config import Settings, load_settings
from connector.daemon import Daemon
from connector.keys import load_any_signing_key
from connector.signals import until_signalled

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
from loopback_dcp import HttpDidResolver, LoopbackHttp
from sts import sts_token

log = logging.getLogger("connector.dcp-tck")
ACCESS_TTL_S = 600


class DcpTckDaemon(Daemon):
    def __init__(self, root: Path, tck_origin: str, sts_secret: str) -> None:
        self._tck_origin = tck_origin
        self._sts_secret = sts_secret.encode()
        # Plain HTTP on loopback: the TCK's client trusts no self-signed certificate.
        super().__init__(load_settings(root), tls=False, dcp_transport=self._loopback_transport,
                         extra_routes=self._add_fixtures)

    def _loopback_transport(self, settings: Settings, client_ssl: ssl.SSLContext
                            ) -> tuple[LoopbackHttp, HttpDidResolver]:
        http = LoopbackHttp(client_ssl, https_origins=[self._tck_origin])
        return http, HttpDidResolver(http, [self._tck_origin], cache_s=settings.did_cache_s,
                                     clock=time.time)

    def _add_fixtures(self, app: web.Application) -> None:
        app.router.add_post("/tck/sts/token", self._sts_token)
        app.router.add_post(f"{CS_PATH}/credentials", self._store_credentials)

    async def _sts_token(self, request: web.Request) -> web.Response:
        return await sts_token(request, identity=self.identity,
                               key=load_any_signing_key(self.settings.signing_key),
                               secret=self._sts_secret, client_id=None, ttl_s=ACCESS_TTL_S)

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
    await until_signalled(f"dcp-tck profile ready: {daemon.settings.public_url}")
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
