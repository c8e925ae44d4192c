"""A data-space authority (credential issuer). IO shell.

The authority is a did:web issuer (README.md "Identity"): it signs membership
credentials as VC JWTs offline, and serves over HTTPS only two public documents, its
``did.json`` and its revocation list (a Bitstring Status List credential, re-signed on each
change). EDC peers list its DID in ``edc.iam.trustedissuer.*``; our verifier in its trusted
issuers. The folder::

    authority.toml  did.json  issued.jsonl  tls/cert.pem
    keys/ (0700; signing-key.pem P-256 and tls-key.pem, 0600)  state/revocation.bin

``issued.jsonl`` logs every issued and revoked credential (ids, subjects, status indices; the
credentials themselves are not secret but are not kept). The member imports the VC JWT it was
given into ``credentials/`` of its participant folder (``participant.credentials``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import ssl
import time
import tomllib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from connector import keys
from connector.core import credentials as vc
from connector.core.errors import ConfigError, NotFound
from connector.core.identity import (
    build_did_document,
    did_web_from_url,
    parse_jws,
    signing_public_jwk,
)
from connector.participant.layout import check_init_target, parse_public_url

log = logging.getLogger(__name__)

AUTHORITY_FILE = "authority.toml"
DID_FILE = "did.json"
SIGNING_KEY = "keys/signing-key.pem"
TLS_KEY = "keys/tls-key.pem"
TLS_CERT = "tls/cert.pem"
STATUS_FILE = "state/revocation.bin"
ISSUED_FILE = "issued.jsonl"
STATUS_PATH = "/status/revocation"
DID_PATH = "/.well-known/did.json"
# A membership lasts a year unless --valid-days says otherwise.
DEFAULT_VALID_DAYS = 365
# The served status-list credential is re-signed on every change and valid for a day; verifiers
# may cache it for STATUS_LIST_CACHE_S, which bounds how long a revoked member is still served.
STATUS_LIST_VALIDITY_S = 86_400
STATUS_LIST_CACHE_S = 60


@dataclass(frozen=True)
class AuthoritySettings:
    """``authority.toml``, read once."""

    root: Path
    did: str
    url: str
    kid: str
    signing_key: Path
    host: str
    port: int
    tls_cert: Path
    tls_key: Path

    @property
    def status_url(self) -> str:
        return self.url + STATUS_PATH


def _authority_toml(url: str, did: str) -> str:
    return (f"[authority]\nurl = {json.dumps(url)}\ndid = {json.dumps(did)}\n"
            f"kid = {json.dumps(did + '#key-1')}\nkey = \"{SIGNING_KEY}\"\n\n"
            f"[server]\ntls_cert = \"{TLS_CERT}\"\ntls_key = \"{TLS_KEY}\"\n")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _write_bits(path: Path, bits: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(bits)
    os.replace(tmp, path)  # verifiers must never see a half-written list


def init_authority(dir: Path, *, url: str) -> AuthoritySettings:
    """Create an authority folder at ``dir`` (absent or empty) for ``https://HOST:PORT``."""
    host, _ = parse_public_url(url)
    url = url.rstrip("/")
    check_init_target(dir)
    did = did_web_from_url(url)
    for sub in ("tls", "state"):
        (dir / sub).mkdir(parents=True, exist_ok=True)
    (dir / "keys").mkdir(mode=0o700)
    (dir / AUTHORITY_FILE).write_text(_authority_toml(url, did))
    key = keys.generate_ec_signing_key(dir / SIGNING_KEY)
    keys.generate_tls(dir / TLS_CERT, dir / TLS_KEY, [host, "localhost", "127.0.0.1"])
    document = build_did_document(did, url, [(did + "#key-1", signing_public_jwk(key))])
    del document["service"]  # an issuer offers no DSP endpoint
    _write_json(dir / DID_FILE, document)
    _write_bits(dir / STATUS_FILE, vc.new_status_list())
    (dir / ISSUED_FILE).write_text("")
    (dir / ".gitignore").write_text("keys/\n")
    return load_authority(dir)


def load_authority(dir: Path) -> AuthoritySettings:
    """Read ``authority.toml``; ConfigError names the file and key."""
    root = dir.resolve()
    path = root / AUTHORITY_FILE
    try:
        data = tomllib.loads(path.read_text())
        table, server = data["authority"], data.get("server", {})
        url, did, kid = str(table["url"]), str(table["did"]), str(table["kid"])
        key = str(table["key"])
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: [authority] missing key {exc}") from exc
    host, port = parse_public_url(url)
    return AuthoritySettings(
        root=root, did=did, url=url, kid=kid, signing_key=root / key, host=host, port=port,
        tls_cert=root / str(server.get("tls_cert", TLS_CERT)),
        tls_key=root / str(server.get("tls_key", TLS_KEY)))


# --- the issued-credentials log -----------------------------------------------------------------


def _log_entries(dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (dir / ISSUED_FILE).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{dir / ISSUED_FILE}: cannot read: {exc.strerror}") from exc
    return [json.loads(line) for line in lines if line.strip()]


def _append_log(dir: Path, entry: dict[str, Any]) -> None:
    with (dir / ISSUED_FILE).open("a") as out:
        out.write(json.dumps(entry, sort_keys=True) + "\n")


def _read_bits(dir: Path) -> bytes:
    try:
        return (dir / STATUS_FILE).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{dir / STATUS_FILE}: cannot read: {exc.strerror}") from exc


def _free_index(used: set[int], size_bits: int) -> int:
    # Bitstring Status List §6.5 (herd privacy): indices are assigned at random, not in order.
    if len(used) >= size_bits:
        raise ConfigError("the status list is full; start a new list")
    while True:
        index = secrets.randbelow(size_bits)
        if index not in used:
            return index


def issue_credential(
    dir: Path,
    *,
    subject: str,
    types: Sequence[str] = (vc.MEMBERSHIP_CREDENTIAL,),
    attributes: dict[str, Any] | None = None,
    valid_days: int = DEFAULT_VALID_DAYS,
    now: float | None = None,
) -> tuple[str, str]:
    """Sign a credential about ``subject``; return (credential id, VC JWT) and log the issue."""
    if not subject.startswith("did:") or any(c.isspace() for c in subject):
        raise ConfigError(f"--subject {subject!r}: must be the member's DID")
    if valid_days <= 0:
        raise ConfigError(f"--valid-days {valid_days}: must be positive")
    settings = load_authority(dir)
    now_s = int(time.time() if now is None else now)
    entries = _log_entries(settings.root)
    used = {int(e["index"]) for e in entries if e.get("event") == "issued"}
    index = _free_index(used, len(_read_bits(settings.root)) * 8)
    credential_id = f"urn:uuid:{uuid.uuid4()}"
    claims = dict(attributes or {})
    if vc.MEMBERSHIP_CREDENTIAL in types:
        # The data space the subject is a member of. EDC also refuses a credentialSubject with
        # no claim besides its id (CredentialSubject.Builder: "must contain claims").
        claims.setdefault("memberOf", settings.did)
    token = vc.issue_credential(
        keys.load_any_signing_key(settings.signing_key), kid=settings.kid, issuer=settings.did,
        subject=subject, credential_id=credential_id, now=now_s, valid_s=valid_days * 86_400,
        types=list(types), attributes=claims,
        status=vc.StatusEntry(settings.status_url, index))
    _append_log(settings.root, {"event": "issued", "id": credential_id, "subject": subject,
                                "types": list(types), "index": index, "at": now_s,
                                "expires": now_s + valid_days * 86_400})
    return credential_id, token


def revoke_credential(dir: Path, credential_id: str, *, now: float | None = None) -> int:
    """Set the revocation bit of an issued credential (idempotent); return its index."""
    settings = load_authority(dir)
    wanted = credential_id if ":" in credential_id else f"urn:uuid:{credential_id}"
    entries = _log_entries(settings.root)
    issued = [e for e in entries if e.get("event") == "issued" and e.get("id") == wanted]
    if not issued:
        raise NotFound(f"no credential {wanted} in {ISSUED_FILE}")
    index = int(issued[0]["index"])
    bits = _read_bits(settings.root)
    if not vc.get_status(bits, index):
        _write_bits(settings.root / STATUS_FILE, vc.set_status(bits, index))
        _append_log(settings.root, {"event": "revoked", "id": wanted, "index": index,
                                    "at": int(time.time() if now is None else now)})
    return index


def status_list_credential(dir: Path, *, now: float | None = None) -> str:
    """The current revocation list as a signed BitstringStatusListCredential JWT."""
    settings = load_authority(dir)
    return vc.issue_status_list_credential(
        keys.load_any_signing_key(settings.signing_key), kid=settings.kid, issuer=settings.did,
        url=settings.status_url, bits=_read_bits(settings.root),
        now=int(time.time() if now is None else now), valid_s=STATUS_LIST_VALIDITY_S)


# --- the HTTPS server ---------------------------------------------------------------------------


class _StatusListCache:
    """The signed list, re-signed when ``state/revocation.bin`` changes (``revoke`` writes it)."""

    def __init__(self, dir: Path) -> None:
        self._dir = dir
        self._stamp: tuple[int, int] | None = None
        self._signed_at = 0.0
        self._token = ""

    def current(self) -> str:
        stat = (self._dir / STATUS_FILE).stat()
        stamp = (stat.st_mtime_ns, stat.st_ino)
        # Re-sign on change, and well before the served credential's validity runs out.
        if stamp != self._stamp or time.time() - self._signed_at > STATUS_LIST_VALIDITY_S / 2:
            self._token = status_list_credential(self._dir)
            self._stamp, self._signed_at = stamp, time.time()
        return self._token


# Media types answered with the credential as JSON rather than as a VC JWT. EDC 0.14 reads the
# status-list credential with a JSON parser and checks no proof on it (BaseRevocationListService
# .downloadStatusListCredential); our verifier asks for, and verifies, the signed JWT.
JSON_CREDENTIAL_TYPES = ("application/vc+ld+json", "application/vc", "application/json")


def status_list_response(token: str, accept: str, *, max_age_s: int) -> web.Response:
    """The status-list credential ``token`` as the client accepts it: VC JWT unless it asks,
    by ``Accept``, for JSON and not for ``application/vc+jwt`` (W3C VC-JOSE-COSE §3)."""
    wanted = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    headers = {"Cache-Control": f"max-age={max_age_s}", "Vary": "Accept"}
    if "application/vc+jwt" not in wanted and wanted & set(JSON_CREDENTIAL_TYPES):
        return web.json_response(parse_jws(token).payload["vc"], headers=headers,
                                 content_type="application/vc+ld+json")
    return web.Response(text=token, content_type="application/vc+jwt", headers=headers)


def authority_app(dir: Path) -> web.Application:
    """``GET /.well-known/did.json`` and ``GET /status/revocation`` (a VC JWT)."""
    settings = load_authority(dir)
    cache = _StatusListCache(settings.root)

    async def did_document(request: web.Request) -> web.Response:
        return web.Response(body=(settings.root / DID_FILE).read_bytes(),
                            content_type="application/json")

    async def status_list(request: web.Request) -> web.Response:
        return status_list_response(cache.current(), request.headers.get("Accept", ""),
                                    max_age_s=STATUS_LIST_CACHE_S)

    app = web.Application()
    app.router.add_get(DID_PATH, did_document)
    app.router.add_get(STATUS_PATH, status_list)
    return app


def _bind_host(host: str) -> str:
    # As for a participant: loopback stays loopback; a name listens on every interface.
    return "127.0.0.1" if host in ("localhost", "127.0.0.1") else "0.0.0.0"


async def serve_authority(dir: Path, *, stop: asyncio.Event | None = None) -> None:
    """Serve the authority over HTTPS (its own self-signed certificate) until ``stop``."""
    settings = load_authority(dir)
    keys.check_private_mode(settings.signing_key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    runner = web.AppRunner(authority_app(dir), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, _bind_host(settings.host), settings.port, ssl_context=ctx).start()
    log.info("authority %s serving %s", settings.did, settings.url)
    print(f"authority {settings.did} serving {settings.url}", flush=True)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()


def run_authority(dir: Path) -> None:
    """``connector authority run DIR``: serve until interrupted."""
    asyncio.run(serve_authority(dir))
