"""``trust/*.json``: the pinned peers, and ``connector trust add`` which pins one.

A pinned peer is a DID with the public keys it signs with, its URL, the TLS certificate to
trust for it and the attributes policies may test. ``peer_problems`` is the one set of rules
on a trust file: ``load_trust`` raises the first, ``lint`` reports them all.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

from connector.config import CONFIG_FILE
from connector.core.binding import DSP_PATH
from connector.core.errors import ConfigError
from connector.core.identity import DSP_SERVICE_TYPE, KeyRing
from connector.participant.layout import (
    DID_FILE,
    TLS_CERT,
    raise_first,
    read_json,
    read_toml,
    write_json,
)


@dataclass(frozen=True)
class Peer:
    """A pinned peer from ``trust/<slug>.json``."""

    did: str
    url: str
    keys: Mapping[str, dict[str, Any]]  # absolute kid -> public JWK
    tls_cert_pem: str | None
    attributes: Mapping[str, Any]
    # A peer whose DSP base is not <url>/dsp/2025-1 (another implementation, e.g. EDC's
    # <host>/protocol/2025-1) names it here; found under /.well-known/dspace-version.
    dsp_base: str | None = None


def peer_problems(data: Any) -> list[tuple[str, str]]:
    """(key, message) for every structural problem of a parsed trust file."""
    if not isinstance(data, dict):
        return [("did", "a trust file must be a JSON object")]
    found: list[tuple[str, str]] = []
    did = data.get("did")
    if not isinstance(did, str) or not did.startswith("did:"):
        found.append(("did", "key 'did' must be a DID string"))
    if not isinstance(data.get("url"), str) or not data["url"].startswith("https://"):
        found.append(("url", "key 'url' must be an https URL"))
    entries = data.get("keys")
    if not isinstance(entries, list) or not entries:
        found.append(("keys", "key 'keys' must be a non-empty list of {kid, jwk}"))
        entries = []
    for entry in entries:
        ok = isinstance(entry, dict) and isinstance(entry.get("kid"), str)
        if not ok or not isinstance(entry.get("jwk"), dict):
            found.append(("keys", "each entry of 'keys' needs a string 'kid' and an object 'jwk'"))
        elif isinstance(did, str) and not entry["kid"].startswith(did + "#"):
            # A pinned key may only vouch for its own DID (the verifier relies on it).
            found.append(("kid", f"key id {entry['kid']!r} is not under {did!r}"))
    if data.get("tls_cert") is not None and not isinstance(data["tls_cert"], str):
        found.append(("tls_cert", "key 'tls_cert' must be a PEM string or null"))
    if not isinstance(data.get("attributes", {}), dict):
        found.append(("attributes", "key 'attributes' must be an object"))
    return found


def peer_from(data: dict[str, Any]) -> Peer:
    """The peer of a trust file without ``peer_problems``; ConfigError for a bad key."""
    peer_keys = {e["kid"]: dict(e["jwk"]) for e in data["keys"]}
    KeyRing(peer_keys)  # converts every JWK once: a bad key is a config error, now
    return Peer(
        did=data["did"],
        url=data["url"].rstrip("/"),
        keys=MappingProxyType(peer_keys),
        tls_cert_pem=data.get("tls_cert"),
        attributes=MappingProxyType(dict(data.get("attributes", {}))),
        dsp_base=data["dsp_base"].rstrip("/") if data.get("dsp_base") else None,
    )


def load_trust(dir: Path, skip: Collection[Path] = ()) -> dict[str, Peer]:
    """The pinned peers of ``trust/*.json`` but the files in ``skip``, keyed by DID;
    ConfigError names file and key."""
    peers: dict[str, Peer] = {}
    for path in sorted((dir / "trust").glob("*.json")):
        if path in skip:
            continue
        data = read_json(path)
        raise_first(path, peer_problems(data))
        try:
            peer = peer_from(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.message}") from exc
        if peer.did in peers:
            raise ConfigError(f"{path}: key 'did': {peer.did} is pinned twice")
        peers[peer.did] = peer
    return peers


def _slug(did: str) -> str:
    """A file name for a DID: ``did:web:h%3A8443:p`` -> ``h-8443-p``."""
    body = unquote(did.removeprefix("did:web:").removeprefix("did:"))
    return re.sub(r"[^A-Za-z0-9._-]+", "-", body).strip("-.") or "peer"


def _document_keys(document: Mapping[str, Any], did: str) -> list[dict[str, Any]]:
    """The (kid, JWK) entries of a DID document's verification methods that carry a JWK."""
    entries = []
    for method in document.get("verificationMethod", []):
        if not isinstance(method, dict) or not isinstance(method.get("publicKeyJwk"), dict):
            continue
        kid = str(method.get("id", ""))
        kid = did + kid if kid.startswith("#") else kid  # relative DID URL (DID core §3.2)
        entries.append({"kid": kid, "jwk": dict(method["publicKeyJwk"])})
    return entries


def _service_url(document: Mapping[str, Any], where: Path) -> str:
    for service in document.get("service", []):
        if isinstance(service, dict) and service.get("type") == DSP_SERVICE_TYPE:
            endpoint = service.get("serviceEndpoint")
            if isinstance(endpoint, str):
                return endpoint.rstrip("/").removesuffix(DSP_PATH)
    raise ConfigError(f"{where}: no service of type {DSP_SERVICE_TYPE} to take the URL from")


def _peer_source(source: Path) -> tuple[Path, str, Path | None]:
    """did.json path, public URL and default TLS certificate of a folder or a did.json."""
    if not source.is_dir():
        document = read_json(source)
        return source, _service_url(document if isinstance(document, dict) else {}, source), None
    config = read_toml(source / CONFIG_FILE)
    url = config.get("participant", {}).get("url")
    if not isinstance(url, str):
        raise ConfigError(f"{source / CONFIG_FILE}: [participant] key 'url' is missing")
    cert = source / str(config.get("server", {}).get("tls_cert", TLS_CERT))
    return source / DID_FILE, url.rstrip("/"), cert if cert.is_file() else None


def _read_certificate(path: Path) -> str:
    from cryptography import x509  # only this command needs it

    try:
        text = path.read_text()
        x509.load_pem_x509_certificate(text.encode())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM certificate") from exc
    return text


def add_trusted_peer(
    dir: Path, source: Path, *, attributes: dict[str, str], tls_cert: Path | None,
    system_ca: bool = False, replace_attributes: bool = False,
) -> Path:
    """Pin the peer described by ``source`` (its folder or its did.json) in ``trust/``.

    Writes ``trust/<slug>.json`` and returns its path. Pinning a DID again (as after a key
    rotation) takes its new keys and URL but keeps what the operator decided: the attributes
    already pinned (``attributes`` are added to them; ``replace_attributes`` replaces them),
    the TLS certificate when none is given, and a ``dsp_base``. Without a TLS certificate
    (given, found in the peer's folder or already pinned) the peer's server must be trusted
    by the system's CAs: refused unless ``system_ca`` says so. Attribute values are kept as
    given strings.
    """
    did_path, url, default_cert = _peer_source(source)
    document = read_json(did_path)
    did = document.get("id") if isinstance(document, dict) else None
    if not isinstance(did, str):
        raise ConfigError(f"{did_path}: key 'id' must be the peer's DID")
    target = dir / "trust" / f"{_slug(did)}.json"
    earlier = read_json(target) if target.exists() else {}
    earlier = earlier if isinstance(earlier, dict) else {}
    if earlier.get("did", did) != did:
        raise ConfigError(f"{target}: already pins another DID")
    cert_path = tls_cert or default_cert
    cert = _read_certificate(cert_path) if cert_path else earlier.get("tls_cert")
    if cert is None and not system_ca:
        raise ConfigError(f"{did_path}: no TLS certificate for {url}: give the peer's "
                          "certificate (--tls-cert tls/cert.pem from their folder), or "
                          "--system-ca if a public CA signed it")
    kept = {} if replace_attributes else dict(earlier.get("attributes") or {})
    data: dict[str, Any] = {
        "did": did,
        "url": url,
        "keys": _document_keys(document, did),
        "tls_cert": cert,
        "attributes": {**kept, **attributes},
    }
    if earlier.get("dsp_base"):
        data["dsp_base"] = earlier["dsp_base"]
    raise_first(did_path, peer_problems(data))
    try:
        peer_from(data)
    except ConfigError as exc:
        raise ConfigError(f"{did_path}: {exc.message}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, data)
    return target


def pinned_peers(dir: Path) -> list[tuple[Path, Peer]]:
    """Each trust file with its peer, in file order (``connector trust list``)."""
    peers = load_trust(dir)
    found = []
    for path in sorted((dir / "trust").glob("*.json")):
        did = read_json(path).get("did")
        if did in peers:
            found.append((path, peers[did]))
    return found


def remove_trusted_peer(dir: Path, which: str) -> Path:
    """Unpin the peer named by its DID or its trust file's name; returns the removed file.

    Its agreements stay (they are records of what was agreed); new requests from it are
    refused once the daemon reloads ``trust/``.
    """
    for path, peer in pinned_peers(dir):
        if which in (peer.did, path.name, path.stem):
            path.unlink()
            return path
    raise ConfigError(f"no pinned peer {which!r} in {dir / 'trust'} (see `connector trust list`)")
