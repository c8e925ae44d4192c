"""Eclipse EDC IdentityHub 0.15.1 as an EDC participant's wallet, for ``make interop-015``.

Standard library only. ``identityhub/pom.xml`` assembles IdentityHub from Maven Central
(``identityhub-bom`` 0.15.1: Identity API, DCP Presentation and Storage APIs, the embedded STS,
DID documents served over did:web) plus ``SuperUserSeedExtension``, which creates the first
Identity API user. Everything else goes through IdentityHub's own APIs, as an operator would:

- ``IdentityApi.create_participant``: a participant context with its DID, an EC P-256 key pair
  generated in IdentityHub and a ``CredentialService`` entry in its DID document; the answer
  holds the STS client id and secret the connector uses;
- ``IdentityApi.store_credential``: a VC JWT issued elsewhere (here by the data-space authority
  in ``interop/edc/wallet.py``), stored in that participant's credential store, from which the
  Presentation API answers verifiers.

Ports (``props``): base+1 default, +2 identity, +3 credentials, +4 did, +5 sts, +6 version.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
JAR = HERE / "identityhub" / "target" / "identityhub-015.jar"
EDC_JAR = HERE / "connector" / "target" / "edc-015-runtime.jar"
SUPER_USER = "super-user"
READY_RE = re.compile(r"Runtime .* ready")
CONTEXTS = {"": ("/api", 1), "identity.": ("/api/identity", 2),
            "credentials.": ("/api/credentials", 3), "did.": ("/", 4), "sts.": ("/api/sts", 5),
            "version.": ("/.well-known/version", 6)}


def b64(text: str) -> str:
    """IdentityHub names a participant context in URLs by its id, base64url-encoded."""
    return base64.urlsafe_b64encode(text.encode()).decode()


def super_user_key(secret: str) -> str:
    """An Identity API key: ``base64(participant context id).secret``."""
    return f"{b64(SUPER_USER)}.{secret}"


def props(base: int, super_key: str) -> dict[str, str]:
    out = {"edc.hostname": "127.0.0.1", "edc.iam.did.web.use.https": "false",
           "edc.iam.accesstoken.jti.validation": "true",
           "interop.ih.superuser.key": super_key}
    for ctx, (path, off) in CONTEXTS.items():
        out[f"web.http.{ctx}port"] = str(base + off)
        out[f"web.http.{ctx}path"] = path
    return out


def url(p: dict[str, str], ctx: str) -> str:
    path = p[f"web.http.{ctx}.path"].rstrip("/")
    return f"http://127.0.0.1:{p[f'web.http.{ctx}.port']}{path}"


def origin(p: dict[str, str], ctx: str) -> str:
    return f"http://127.0.0.1:{p[f'web.http.{ctx}.port']}"


def did_for(p: dict[str, str], name: str) -> str:
    """The did:web IdentityHub serves for ``name``: ``<did origin>/<name>/did.json``."""
    return f"did:web:127.0.0.1%3A{p['web.http.did.port']}:{name}"


def start(p: dict[str, str], run_dir: Path, java: str = "java",
          timeout: float = 180.0) -> subprocess.Popen[bytes]:
    """Start IdentityHub; wait for ``Runtime ... ready``. The log is ``run_dir/identityhub.log``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_dir / "identityhub.properties"
    cfg.write_text("".join(f"{k}={v}\n" for k, v in p.items()))
    cfg.chmod(0o600)
    log_path = run_dir / "identityhub.log"
    with log_path.open("wb") as logf:
        proc = subprocess.Popen([java, f"-Dedc.fs.config={cfg}", "-Djava.net.preferIPv4Stack=true",
                                 "-jar", str(JAR)], stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    t0 = time.monotonic()
    while time.monotonic() < t0 + timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"IdentityHub exited rc={proc.returncode}; see {log_path}")
        if READY_RE.search(log_path.read_text(errors="replace")):
            proc.ready_seconds = time.monotonic() - t0  # type: ignore[attr-defined]
            proc.log_path = log_path  # type: ignore[attr-defined]
            return proc
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"IdentityHub not ready after {timeout} s; see {log_path}")


def credential_model(jwt: str) -> dict[str, Any]:
    """The VC inside a VC JWT in the shape of EDC's ``VerifiableCredential`` (Jackson): issuer
    as an object, subjects and statuses as lists, subject claims under ``claims``."""
    payload = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))
    vc = payload["vc"]
    subjects = vc["credentialSubject"]
    statuses = vc.get("credentialStatus", [])
    return {
        "id": vc["id"], "type": vc["type"],
        "issuer": {"id": vc["issuer"], "additionalProperties": {}},
        "issuanceDate": vc["issuanceDate"], "expirationDate": vc.get("expirationDate"),
        "credentialSubject": [{"id": s["id"], "claims": {k: v for k, v in s.items() if k != "id"}}
                              for s in (subjects if isinstance(subjects, list) else [subjects])],
        "credentialStatus": [{"id": s.get("id", vc["id"] + "#status"), "type": s["type"],
                              "additionalProperties": {k: v for k, v in s.items()
                                                       if k not in ("id", "type")}}
                             for s in (statuses if isinstance(statuses, list) else [statuses])],
    }


class IdentityApi:
    """IdentityHub's Identity API (``/v1alpha``), called as the super-user."""

    def __init__(self, p: dict[str, str], api_key: str) -> None:
        self.base = url(p, "identity") + "/v1alpha"
        self.credentials_base = url(p, "credentials")
        self.headers = {"x-api-key": api_key, "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"IdentityHub {method} {path} -> {exc.code}: "
                               f"{exc.read()[:600].decode(errors='replace')}") from None
        return json.loads(raw) if raw.strip() else None

    def create_participant(self, did: str, services: list[dict[str, str]]) -> dict[str, Any]:
        """A participant context named by its DID, with a P-256 key and a CredentialService
        entry (the Presentation API's address for it). Answers apiKey, clientId, clientSecret."""
        endpoint = f"{self.credentials_base}/v1/participants/{b64(did)}"
        manifest = {
            "participantContextId": did, "did": did, "active": True, "roles": [],
            "key": {"keyId": did + "#key-1", "privateKeyAlias": did + "-key",
                    "keyGeneratorParams": {"algorithm": "EC", "curve": "secp256r1"}},
            "serviceEndpoints": [{"type": "CredentialService", "serviceEndpoint": endpoint,
                                  "id": "credential-service"}, *services],
        }
        return dict(self.call("POST", "/participants", manifest))

    def store_credential(self, did: str, jwt: str) -> None:
        manifest = {"id": str(uuid.uuid4()), "participantContextId": did,
                    "verifiableCredentialContainer": {"rawVc": jwt, "format": "VC1_0_JWT",
                                                      "credential": credential_model(jwt)}}
        self.call("POST", f"/participants/{b64(did)}/credentials", manifest)

    def credentials(self, did: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/participants/{b64(did)}/credentials"))
