"""DCP over plain HTTP on loopback, for test profiles only (``make dcp-tck``, ``make interop``).

JVM test peers (the DCP TCK, Eclipse EDC) serve their DID documents and Credential Services
over plain HTTP and trust no self-signed certificate, so a profile talking to them resolves
did:web over http and fetches http://loopback. Our verifier itself insists on an ``https://``
CredentialService; the peers' http endpoints under ``https_origins`` are shown to it as
https and mapped back to http on the wire. Nothing in the ``connector`` package imports this.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from procs import free_port_pair
from yarl import URL

from connector.adapters.http.guard import GuardedHttp
from connector.config import load_settings
from connector.core.binding import DSP_PATH
from connector.core.errors import AuthError
from connector.core.identity import build_did_document, signing_public_jwk
from connector.keys import generate_ec_signing_key
from connector.participant.init import init_folder
from connector.service.dcp_verifier import DidResolver

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class LoopbackHttp(GuardedHttp):
    """GuardedHttp for a loopback test: plain http:// to loopback hosts only.

    ``https://`` URLs on one of ``https_origins``' host:port are fetched over http; the rest of
    GuardedHttp's request path stays (status 200, size bounds, no redirects, every failure an
    AuthError).
    """

    def __init__(self, ssl_context: ssl.SSLContext, https_origins: Sequence[str]) -> None:
        super().__init__(ssl_context)
        self._mapped = {urlsplit(origin).netloc for origin in https_origins}

    def _target(self, method: str, url: str) -> URL:
        """GuardedHttp's request path, with http://loopback allowed instead of https only."""
        parts = urlsplit(url)
        if parts.scheme == "https" and parts.netloc in self._mapped:
            return URL("http://" + url.removeprefix("https://"))
        if parts.scheme != "http" or parts.hostname not in LOOPBACK:
            raise AuthError(f"{method} {url[:200]}: a loopback profile fetches only "
                            "http://loopback")
        return URL(url)


class HttpDidResolver(DidResolver):
    """did:web over http; CredentialService endpoints under ``https_origins`` shown as https."""

    def __init__(self, http: LoopbackHttp, https_origins: Sequence[str], **kwargs: Any) -> None:
        super().__init__(http, scheme="http", **kwargs)
        self._origins = tuple(o.rstrip("/") for o in https_origins)

    async def document(self, did: str) -> dict[str, Any]:
        doc = await super().document(did)
        services = doc.get("service")
        if not isinstance(services, list):
            return doc
        fixed = []
        for s in services:
            endpoint = s.get("serviceEndpoint") if isinstance(s, dict) else None
            if isinstance(endpoint, str) and endpoint.startswith(self._origins):
                s = {**s, "serviceEndpoint": "https://" + endpoint.removeprefix("http://")}
            fixed.append(s)
        return {**doc, "service": fixed}


def loopback_folder(folder: Path, name: str, *, dcp_issuers: Sequence[str] = (),
                    identity: str = "") -> str:
    """A participant folder served over plain HTTP on loopback; returns its public URL.

    With ``dcp_issuers`` it is in DCP mode (those DIDs trusted for MembershipCredential,
    ``identity`` appended to the ``[identity]`` table) and signs with a **P-256** key: the
    DCP TCK and EDC verify EC keys only.
    """
    port = free_port_pair()
    https, url = f"https://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    init_folder(folder, name=name, url=https)
    toml = folder / "connector.toml"
    text = toml.read_text().replace(f'url = "{https}"', f'url = "{url}"')
    if dcp_issuers:
        trusted = "\n".join(f'"{did}" = ["MembershipCredential"]' for did in dcp_issuers)
        text += (f'\n[identity]\nmode = "dcp"\nrequired_credentials = ["MembershipCredential"]\n'
                 f"{identity}[identity.trusted_issuers]\n{trusted}\n")
    toml.write_text(text)
    if dcp_issuers:
        settings = load_settings(folder)
        settings.signing_key.unlink()
        key = generate_ec_signing_key(settings.signing_key)
        document = build_did_document(settings.did, url + DSP_PATH,
                                      [(settings.signing_kid, signing_public_jwk(key))])
        (folder / "did.json").write_text(json.dumps(document, indent=2) + "\n")
    return url
