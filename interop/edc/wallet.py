"""Test-only identity services for the EDC participant of ``make interop``'s DCP mode.

EDC 0.14.1 is a DCP *verifier and client*: it needs, outside itself, what a wallet (EDC's
IdentityHub, a separate product not published for 0.14) provides. This process plays that
part, and a data-space authority's, over plain HTTP on one loopback port:

- ``GET /authority/did.json``, ``GET /authority/status``: the authority
  ``did:web:127.0.0.1%3A<port>:authority`` (P-256) and its BitstringStatusList credential
  (``POST /authority/revoke {"subject": DID}`` sets the bits of that member's credentials);
- ``GET /edc/did.json``: EDC's DID document ``did:web:127.0.0.1%3A<port>:edc`` (P-256,
  a ``CredentialService`` entry pointing at ``/edc/cs``);
- ``POST /edc/sts/token``: EDC's remote STS (OAuth2 client credentials, EDC's
  ``RemoteSecureTokenService`` form: ``audience`` plus ``bearer_access_scope`` or ``token``);
  it answers the self-issued ID token EDC then sends, signed with EDC's key;
- ``POST /edc/cs/presentations/query``: EDC's Credential Service, which is our own
  ``service.dcp_verifier.CredentialService`` holding EDC's key and its MembershipCredential.

On start it writes a MembershipCredential for ``--member`` (our connector's DID) to
``--member-credential`` and prints ``wallet ready``. With ``--edc-did`` (``make interop-015``,
where EDC's IdentityHub is EDC's wallet) only the authority's part is used: EDC's
MembershipCredential is issued to that DID and written to ``--edc-credential``, for the
harness to store in IdentityHub. The DCP decisions under test stay with
the two connectors: EDC's IdentityAndTrustService verifies our tokens, presentations and
credentials; our DcpVerifier verifies EDC's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))

from loopback_dcp import HttpDidResolver, LoopbackHttp
from sts import sts_token

from connector.authority import status_list_response
from connector.core import credentials as vc
from connector.core.errors import ConnectorError
from connector.core.identity import (
    KeyRing,
    SigningKey,
    build_did_document,
    document_keys,
    signing_public_jwk,
    with_credential_service,
)
from connector.keys import generate_ec_signing_key
from connector.service.auth import Identity
from connector.service.dcp_verifier import CredentialService, DcpVerifier
from connector.signals import until_signalled

log = logging.getLogger("connector.edc-wallet")
TOKEN_TTL_S = 300
CREDENTIAL_VALID_S = 86_400
STATUS_MAX_AGE_S = 1


def _document(did: str, key: SigningKey, *, dsp_url: str = "", cs_url: str = "") -> dict[str, Any]:
    doc = build_did_document(did, dsp_url or "http://unused", [(did + "#key-1",
                                                                 signing_public_jwk(key))])
    if not dsp_url:
        del doc["service"]  # an issuer offers no DSP endpoint
    return with_credential_service(doc, cs_url) if cs_url else doc


class Wallet:
    def __init__(self, root: Path, port: int, *, edc_dsp: str, sts_secret: str,
                 edc_did: str | None = None) -> None:
        self.origin = f"http://127.0.0.1:{port}"
        host = f"127.0.0.1%3A{port}"
        self.authority_did = f"did:web:{host}:authority"
        self.edc_did = edc_did or f"did:web:{host}:edc"
        root.mkdir(parents=True, exist_ok=True)
        self._authority_key = generate_ec_signing_key(root / "authority-key.pem")
        self._edc_key = generate_ec_signing_key(root / "edc-key.pem")
        self._secret = sts_secret.encode()
        self.authority_doc = _document(self.authority_did, self._authority_key)
        self.edc_doc = _document(self.edc_did, self._edc_key, dsp_url=edc_dsp,
                                 cs_url=self.origin + "/edc/cs")
        self._bits = vc.new_status_list()
        self._next_index = 0
        self._indices: dict[str, list[int]] = {}  # subject DID -> status-list indices
        self.edc_credential = self.issue(self.edc_did)
        http = LoopbackHttp(ssl.create_default_context(), https_origins=())
        self._http = http
        identity = self._identity = Identity(
            did=self.edc_did, kid=self.edc_did + "#key-1", key=self._edc_key, ttl_s=TOKEN_TTL_S,
            clock=time.time, dcp_mode=True)
        resolver = HttpDidResolver(http, (), cache_s=0, clock=time.time)
        # Only verify_token is used: the caller's self-issued token, checked against its DID.
        verifier = DcpVerifier(identity=identity, resolver=resolver, http=http,
                               trusted_issuers={}, required_types=(), leeway_s=5,
                               status_cache_s=0, clock=time.time)
        own = KeyRing(document_keys(self.edc_doc, self.edc_did))
        self.cs = CredentialService(identity=identity, verifier=verifier, own_keys=lambda: own,
                                    credentials=lambda: [self.edc_credential], leeway_s=5,
                                    clock=time.time)

    @property
    def status_url(self) -> str:
        return self.origin + "/authority/status"

    def issue(self, subject: str) -> str:
        """A MembershipCredential about ``subject`` with a status-list entry of its own."""
        index, self._next_index = self._next_index, self._next_index + 1
        self._indices.setdefault(subject, []).append(index)
        return vc.issue_credential(
            self._authority_key, kid=self.authority_did + "#key-1", issuer=self.authority_did,
            subject=subject, credential_id=f"urn:uuid:{uuid.uuid4()}", now=int(time.time()) - 5,
            valid_s=CREDENTIAL_VALID_S, types=[vc.MEMBERSHIP_CREDENTIAL],
            attributes={"memberOf": self.authority_did},  # as `connector authority issue` does
            status=vc.StatusEntry(self.status_url, index))

    # -- HTTP ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/authority/did.json", self._authority_document)
        app.router.add_get("/authority/status", self._status)
        app.router.add_post("/authority/revoke", self._revoke)
        app.router.add_get("/edc/did.json", self._edc_document)
        app.router.add_post("/edc/sts/token", self._sts_token)
        app.router.add_post("/edc/cs/presentations/query", self._query)
        app.on_cleanup.append(lambda _: self._http.close())
        return app

    async def _authority_document(self, request: web.Request) -> web.Response:
        return web.json_response(self.authority_doc)

    async def _edc_document(self, request: web.Request) -> web.Response:
        return web.json_response(self.edc_doc)

    async def _status(self, request: web.Request) -> web.Response:
        token = vc.issue_status_list_credential(
            self._authority_key, kid=self.authority_did + "#key-1", issuer=self.authority_did,
            url=self.status_url, bits=self._bits, now=int(time.time()) - 5, valid_s=3600)
        answer = status_list_response(token, request.headers.get("Accept", ""),
                                      max_age_s=STATUS_MAX_AGE_S)
        log.info("authority: status list served as %s (Accept: %s)", answer.content_type,
                 request.headers.get("Accept", "")[:100])
        return answer

    async def _revoke(self, request: web.Request) -> web.Response:
        """The authority revokes every credential it issued to ``{"subject": DID}``."""
        subject = str((await request.json()).get("subject", ""))
        for index in self._indices.get(subject, []):
            self._bits = vc.set_status(self._bits, index)
        log.info("authority: revoked %s (indices %s)", subject, self._indices.get(subject))
        return web.json_response({"revoked": self._indices.get(subject, [])})

    async def _sts_token(self, request: web.Request) -> web.Response:
        return await sts_token(request, identity=self._identity, key=self._edc_key,
                               secret=self._secret, client_id=self.edc_did, ttl_s=TOKEN_TTL_S)

    async def _query(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            answer = await self.cs.query(request.headers.get("Authorization"), body)
        except ValueError:
            return web.json_response({"error": "malformed JSON"}, status=400)
        except ConnectorError as exc:
            log.info("CS: refused: %s", exc)
            return web.json_response({"error": str(exc)}, status=exc.status)
        log.info("CS: %d presentation(s) for %s", len(answer["presentation"]),
                 body.get("scope"))
        return web.json_response(answer)


async def serve(args: argparse.Namespace) -> None:
    wallet = Wallet(args.dir, args.port, edc_dsp=args.edc_dsp, sts_secret=args.sts_secret,
                    edc_did=args.edc_did)
    args.member_credential.write_text(wallet.issue(args.member) + "\n")
    if args.edc_credential is not None:
        args.edc_credential.write_text(wallet.edc_credential + "\n")
    runner = web.AppRunner(wallet.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    await until_signalled(f"wallet ready: {wallet.origin} edc={wallet.edc_did} "
                          f"authority={wallet.authority_did}")
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="where the keys go")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--edc-dsp", required=True, help="EDC's versioned DSP base")
    parser.add_argument("--sts-secret", required=True)
    parser.add_argument("--member", required=True, help="our connector's DID")
    parser.add_argument("--member-credential", type=Path, required=True)
    parser.add_argument("--edc-did", help="EDC's DID when its wallet is elsewhere (IdentityHub)")
    parser.add_argument("--edc-credential", type=Path,
                        help="where to write EDC's MembershipCredential (with --edc-did)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
