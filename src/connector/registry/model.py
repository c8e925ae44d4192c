"""Signed catalogue snapshots and what the registry accepts in them. Pure: no IO, no clock.

Theory of operation. A participant publishes its DCAT catalogue as one compact JWS (the
*snapshot*), signed with the Ed25519 key of its DID document (``kid`` = its signing kid)::

    header  {"alg": "EdDSA", "typ": "dcat-snapshot+jwt", "kid": "<did>#key-1"}
    claims  {"iss" = "sub": <did>, "aud": SNAPSHOT_AUDIENCE, "iat", "exp",
             "jti" = "etag": sha256(canonical catalogue), "catalog": {...DCAT Catalog...}}

``aud`` names no particular registry, so any registry can verify a snapshot it received by
replication, with the same checks as ``core.identity.verify_token``. ``iat`` orders
snapshots (last writer wins per publisher); ``exp`` is when the entry vanishes unless
renewed. The ETag is the SHA-256 of the canonical JSON of the catalogue, so an unchanged
catalogue has an unchanged ETag.

The registry refuses anything that looks like data rather than metadata: a size cap, keys
that carry data or access (``dataAddress``, ``endpointProperties``, ``authorization``,
token-ish keys, ``records``...), token-looking strings (JWTs, ``Bearer ...``, pre-signed URLs),
long arrays, long strings and deep nesting.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connector.core.catalog import DatasetText
from connector.core.codec import within_depth
from connector.core.errors import AuthError, ConnectorError
from connector.core.identity import KeyRing, SigningKey, sign_jwt, verify_token

SNAPSHOT_AUDIENCE = "urn:connector:registry"
SNAPSHOT_TYPE = "dcat-snapshot+jwt"
# An entry lives a day unless renewed (the publisher renews at half of it); a week at most,
# so a participant that leaves the space disappears within a week whatever it signed.
DEFAULT_TTL_S = 24 * 3600
MAX_TTL_S = 7 * 24 * 3600
# Caps on what metadata can look like. 256 KiB holds ~1,000 datasets of rich metadata;
# anything bigger is data in disguise. Keywords, themes, distributions: a few dozen at most.
MAX_CATALOG_BYTES = 256 * 1024
MAX_DATASETS = 1000
MAX_ARRAY_ITEMS = 64
MAX_STRING_CHARS = 4096
MAX_DEPTH = 8
# The JWS is base64url (4/3 of the payload) plus header and signature.
MAX_JWS_CHARS = MAX_CATALOG_BYTES * 4 // 3 + 2048

# Keys (local names, case and '-'/'_' ignored) that carry data or the means to reach it.
FORBIDDEN_KEYS = frozenset({
    "dataaddress", "endpointproperties", "endpointtype", "endpoint", "authorization",
    "authtoken", "token", "accesstoken", "refreshtoken", "bearertoken", "apikey", "password",
    "secret", "clientsecret", "credentials", "privatekey", "records", "record", "rows", "data",
    "payload", "content", "sample", "samples", "values",
})
_JWT_LIKE = re.compile(r"^eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*$")
_SIGNED_URL = re.compile(
    r"^https?://[^?#]*\?.*\b(token|access_token|sig|signature|x-amz-signature|apikey|api_key|"
    r"key|code)=", re.IGNORECASE)


class PublicationRefused(ConnectorError, status=422, code="refused"):
    """A snapshot the registry will not hold: malformed, data-bearing, too big, stale."""


class NotMember(AuthError, status=403, code="not-member"):
    """The publisher or caller is not a pinned member (``membership = active``) of the space."""


def is_member(attributes: Mapping[str, Any]) -> bool:
    """Membership as pinned in ``trust/``: the attribute ``membership`` is ``active``."""
    return attributes.get("membership") == "active"


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: equal documents give equal bytes (and ETags)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def etag_of(catalog: Mapping[str, Any]) -> str:
    """The ETag of a catalogue: SHA-256 of its canonical JSON, hex."""
    return hashlib.sha256(canonical_json(catalog)).hexdigest()


# --- what a catalogue may contain ----------------------------------------------------------------


def _local_name(key: str) -> str:
    """``dspace:dataAddress``, ``https://w3id.org/dspace/v0.8/dataAddress`` -> ``dataaddress``."""
    local = re.split(r"[:#/]", key)[-1]
    return local.replace("_", "").replace("-", "").lower()


def _where(path: list[str]) -> str:
    return "$" + "".join(path)


def _check_node(value: Any, path: list[str], in_datasets: bool = False) -> None:
    """Refuse structure no metadata needs, anywhere in the document (depth-first).

    ``path`` is a stack of ``.key`` / ``[i]`` parts, joined only for an error message: this
    runs over every node of every publication.
    """
    if len(path) > MAX_DEPTH:
        raise PublicationRefused(f"{_where(path)}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_string(value, path)
    elif isinstance(value, dict):
        if _local_name(str(value.get("@type", ""))) == "dataaddress":
            raise PublicationRefused(f"{_where(path)}: a DataAddress is not metadata")
        for key, item in value.items():
            path.append(f".{key}")
            if _local_name(key) in FORBIDDEN_KEYS:
                raise PublicationRefused(f"{_where(path)}: data or access fields are not "
                                         "metadata; the registry holds no data addresses")
            _check_node(item, path, in_datasets=len(path) == 1 and key == "dataset")
            path.pop()
    elif isinstance(value, list):
        if len(value) > MAX_ARRAY_ITEMS and not in_datasets:
            raise PublicationRefused(f"{_where(path)}: {len(value)} items (at most "
                                     f"{MAX_ARRAY_ITEMS}); embedded records are not metadata")
        for i, item in enumerate(value):
            path.append(f"[{i}]")
            _check_node(item, path)
            path.pop()


def _check_string(value: str, path: list[str]) -> None:
    if len(value) > MAX_STRING_CHARS:
        raise PublicationRefused(f"{_where(path)}: string of {len(value)} characters "
                                 f"(at most {MAX_STRING_CHARS})")
    text = value.strip()
    if text[:3] == "eyJ" and _JWT_LIKE.match(text):
        raise PublicationRefused(f"{_where(path)}: looks like a token")
    if text[:7].lower() == "bearer " or ("?" in text and _SIGNED_URL.match(text)):
        raise PublicationRefused(f"{_where(path)}: looks like a token or a signed data URL")


def check_catalog_content(catalog: Any) -> bytes:
    """Raise PublicationRefused when the catalogue is too big or carries anything data-like.

    Returns the canonical JSON (whose SHA-256 is the ETag), computed once here.
    """
    if not isinstance(catalog, dict):
        raise PublicationRefused("catalog must be a JSON object")
    canonical = canonical_json(catalog)
    if len(canonical) > MAX_CATALOG_BYTES:
        raise PublicationRefused(f"catalog is {len(canonical)} bytes "
                                 f"(at most {MAX_CATALOG_BYTES})")
    _check_node(catalog, [])
    return canonical


# --- what the registry indexes ---------------------------------------------------------------


@dataclass(frozen=True)
class DatasetMeta(DatasetText):
    """One dataset as the registry indexes it."""

    themes: tuple[str, ...]
    formats: tuple[str, ...]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _text(value: Any) -> str:
    """A DCAT literal: a string, a ``{"@value"}`` object or a list of them (first one wins)."""
    for item in _as_list(value):
        if isinstance(item, str):
            return item
        if isinstance(item, dict) and isinstance(item.get("@value"), str):
            return str(item["@value"])
    return ""


def _terms(value: Any) -> tuple[str, ...]:
    """Strings or ``{"@id"}`` references, trimmed, de-duplicated, in order."""
    out: list[str] = []
    for item in _as_list(value):
        term = item if isinstance(item, str) else (
            item.get("@id") or item.get("@value") if isinstance(item, dict) else None)
        if isinstance(term, str) and term.strip() and term.strip() not in out:
            out.append(term.strip())
    return tuple(out)


def _dataset_meta(doc: Any, path: str) -> DatasetMeta:
    if not isinstance(doc, dict) or not isinstance(doc.get("@id"), str) or not doc["@id"]:
        raise PublicationRefused(f"{path}: a dataset needs a string @id")
    formats: list[str] = []
    for dist in _as_list(doc.get("distribution")):
        if isinstance(dist, dict):
            formats.extend(f for f in _terms(dist.get("format")) if f not in formats)
    return DatasetMeta(
        id=doc["@id"], title=_text(doc.get("title")),
        description=_text(doc.get("description")), keywords=_terms(doc.get("keyword")),
        themes=_terms(doc.get("theme")), formats=tuple(formats))


def dsp_endpoint(catalog: Mapping[str, Any]) -> str:
    """The publisher's DSP endpoint: the ``endpointURL`` of the catalogue's DataService."""
    for service in _as_list(catalog.get("service")):
        url = service.get("endpointURL") if isinstance(service, dict) else None
        if isinstance(url, str) and url.startswith("https://"):
            return url
    raise PublicationRefused("catalog has no DataService with an https endpointURL")


def index_catalog(catalog: Any, publisher: str) -> tuple[str, list[DatasetMeta], str]:
    """Check a catalogue; (DSP endpoint, datasets, ETag), or PublicationRefused.

    DSP 2025-1 §CAT 2: ``participantId`` names the publisher, which must be the signer.
    """
    etag = hashlib.sha256(check_catalog_content(catalog)).hexdigest()
    if _local_name(str(catalog.get("@type", ""))) != "catalog":
        raise PublicationRefused("catalog @type must be Catalog")
    if catalog.get("participantId") != publisher:
        raise PublicationRefused("catalog participantId is not the signer's DID")
    datasets = _as_list(catalog.get("dataset"))
    if len(datasets) > MAX_DATASETS:
        raise PublicationRefused(f"{len(datasets)} datasets (at most {MAX_DATASETS})")
    metas = [_dataset_meta(d, f"$.dataset[{i}]") for i, d in enumerate(datasets)]
    if len({m.id for m in metas}) != len(metas):
        raise PublicationRefused("dataset @id values must be unique")
    return dsp_endpoint(catalog), metas, etag


# --- snapshots ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot: who signed it, when, until when, and what it says."""

    publisher: str
    issued_at: int
    expires_at: int
    etag: str
    endpoint: str
    datasets: tuple[DatasetMeta, ...]
    jws: str


def sign_snapshot(key: SigningKey, *, kid: str, did: str, catalog: Mapping[str, Any],
                  now: int, ttl_s: int = DEFAULT_TTL_S) -> str:
    """The compact JWS a participant publishes (see the module docstring); Ed25519 or EC."""
    etag = etag_of(catalog)
    claims = {"iss": did, "sub": did, "aud": SNAPSHOT_AUDIENCE, "iat": now, "exp": now + ttl_s,
              "jti": etag, "etag": etag, "catalog": dict(catalog)}
    return sign_jwt(key, kid=kid, claims=claims, typ=SNAPSHOT_TYPE)


def _segment(token: str, index: int) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError("malformed snapshot: not a compact JWS")
    try:
        raw = base64.urlsafe_b64decode(parts[index] + "=" * (-len(parts[index]) % 4))
        value = json.loads(within_depth(raw))
    except ValueError as exc:
        raise AuthError("malformed snapshot: bad base64url or JSON") from exc
    if not isinstance(value, dict):
        raise AuthError("malformed snapshot: not a JSON object")
    return value


def claimed_publisher(token: str) -> str:
    """The ``iss`` a snapshot claims, before verification (to look up its pinned keys)."""
    if len(token) > MAX_JWS_CHARS:
        raise PublicationRefused(f"snapshot of {len(token)} characters "
                                 f"(at most {MAX_JWS_CHARS})")
    issuer = _segment(token, 1).get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise AuthError("malformed snapshot: no iss")
    return issuer


def read_snapshot(token: str, *, keys: KeyRing, now: int, leeway_s: int) -> Snapshot:
    """Verify a snapshot against the publisher's pinned keys and check its catalogue.

    AuthError for a forged, expired or misaddressed JWS; PublicationRefused for a valid
    signature over something the registry will not hold.
    """
    publisher = claimed_publisher(token)
    claims = verify_token(token, audience=SNAPSHOT_AUDIENCE, now=now, leeway_s=leeway_s,
                          keys=keys)
    payload = _segment(token, 1)  # signature verified above: the payload is the signer's
    if claims.expires_at - claims.issued_at > MAX_TTL_S:
        raise PublicationRefused(f"snapshot lifetime over {MAX_TTL_S} s")
    catalog = payload.get("catalog")
    endpoint, datasets, etag = index_catalog(catalog, publisher)
    if payload.get("etag") != etag or claims.jti != etag:
        raise PublicationRefused("snapshot etag is not the SHA-256 of its catalogue")
    return Snapshot(publisher=publisher, issued_at=claims.issued_at,
                    expires_at=claims.expires_at, etag=etag, endpoint=endpoint,
                    datasets=tuple(datasets), jws=token)


def newer(incoming: tuple[int, str], held: tuple[int, str] | None) -> bool:
    """Last writer wins per publisher: a later signed ``iat``, ties broken by ETag order."""
    return held is None or incoming > held
