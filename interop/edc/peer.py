"""Test-only "iam-mock interop" profile: our connector as a DSP peer of a local Eclipse EDC.

Never for production. Like ``interop/tck/profile.py`` it lives outside the installed package:
nothing in ``connector`` imports it, so no ``connector.toml`` can switch it on.
``interop/edc/run.py`` starts it as::

    python interop/edc/peer.py DIR --edc ID=DSP_BASE [--edc ID=DSP_BASE ...] [--dcp WALLET]

where ``DSP_BASE`` is the EDC participant's versioned DSP base (for example
``http://127.0.0.1:19194/protocol/2025-1``).

With ``--dcp WALLET`` (the origin of ``interop/edc/wallet.py``) the identity is the folder's
own DCP mode instead of iam-mock: self-issued tokens, our Credential Service, EDC's
presentations verified by our DcpVerifier. Only the transport differs from a production
daemon: DIDs resolved over http and http://loopback fetched (``interop/common/loopback_dcp.py``).

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
  ``keys`` non-empty) and ``<root> + /dsp/2025-1`` would be the wrong base.

With ``--credential-service ORIGIN`` (``make interop-015``: EDC's wallet is IdentityHub
0.15.1) that origin's http Credential Service is accepted as well. IdentityHub publishes
``"authentication": []`` (and the other verification relationships empty); the connector reads
an empty list as an absent one (README "Differences found with 0.15.1").

The wire differences ``make interop`` found (EDC's paging filter, data addresses named by EDC
IRIs, EDC's raw EDR token) are handled by the connector itself (README "Differences").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from connector.adapters.http.client import PeerClient
from connector.config import Settings, load_settings
from connector.core.errors import AuthError
from connector.daemon import Daemon
from connector.service.auth import Identity, Verifier
from connector.service.catalog import Claims
from connector.signals import until_signalled

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
from loopback_dcp import HttpDidResolver, LoopbackHttp

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

    def authorization(self, audience: str, body: bytes | None = None) -> str:
        return iam_mock_authorization(self.did, audience)  # nothing signed: nothing to bind


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


# -- the daemon ---------------------------------------------------------------------------------


class EdcPeerDaemon(Daemon):
    def __init__(self, root: Path, edc_peers: Mapping[str, str], wallet: str | None = None,
                 credential_services: Sequence[str] = ()) -> None:
        self._wallet = wallet
        self._cs_origins = [*([wallet] if wallet else []), *credential_services]
        # EDC cannot be pinned in trust/: the management API finds it by its DSP base.
        # Plain HTTP on loopback: EDC's JVM client trusts no self-signed certificate.
        super().__init__(load_settings(root), unpinned_peers=edc_peers, tls=False,
                         dcp_transport=self._loopback_transport)
        self.edc_peers = dict(edc_peers)  # participant id -> versioned DSP base
        if wallet is None:
            self._use_iam_mock()

    def _loopback_transport(self, settings: Settings, client_ssl: ssl.SSLContext
                            ) -> tuple[LoopbackHttp, HttpDidResolver]:
        origins = self._cs_origins
        http = LoopbackHttp(client_ssl, https_origins=origins)
        return http, HttpDidResolver(http, origins, cache_s=settings.did_cache_s, clock=time.time)

    def _use_iam_mock(self) -> None:
        s = self.settings
        self.identity = IamMockIdentity(did=s.did, kid=s.signing_kid,
                                        key=self.identity._key, ttl_s=s.token_ttl_s,
                                        clock=time.time)
        self.verifier = IamMockVerifier(list(self.edc_peers), did=s.did,
                                        peers=self.folder.peers, leeway_s=s.clock_leeway_s,
                                        clock=time.time)
        self.client = PeerClient(self.identity, self._client_ssl())

    def claims_for(self, did: str) -> Claims:
        # iam-mock: the data plane re-evaluates the agreement for its assignee (in DCP mode the
        # verifier holds the claims EDC's presentation proved)
        if did in self.edc_peers and self._wallet is None:
            return Claims(participant_id=did, attributes=dict(EDC_ATTRIBUTES))
        return super().claims_for(did)


def parse_edc(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for value in values:
        pid, sep, base = value.partition("=")
        if not sep or not pid or not base.startswith("http"):
            raise SystemExit(f"--edc {value!r}: expected ID=DSP_BASE")
        out[pid] = base.rstrip("/")
    return out


async def serve(root: Path, edc_peers: Mapping[str, str], wallet: str | None,
                credential_services: Sequence[str] = ()) -> None:
    daemon = EdcPeerDaemon(root, edc_peers, wallet, credential_services)
    await daemon.start()
    mode = "DCP" if wallet else "iam-mock"
    await until_signalled(f"edc-interop profile ({mode}) ready: {daemon.settings.public_url} "
                          f"(management {daemon.settings.management_url})")
    await daemon.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--edc", action="append", default=[], metavar="ID=DSP_BASE",
                        help="an EDC participant id and its versioned DSP base")
    parser.add_argument("--dcp", metavar="WALLET", default=None,
                        help="DCP identity; WALLET is the origin of interop/edc/wallet.py")
    parser.add_argument("--credential-service", action="append", default=[], metavar="ORIGIN",
                        help="another http origin of a peer's Credential Service (IdentityHub)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.dir, parse_edc(args.edc), args.dcp, args.credential_service))
    return 0


if __name__ == "__main__":
    sys.exit(main())
