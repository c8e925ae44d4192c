"""Identity: did:web names, DID documents and self-issued ID tokens. Pure: no IO, no clock.

Theory of operation. Every DSP request carries a self-issued ID token (DCP 1.0
§Self-Issued ID Tokens): a JWS signed by the sender with a key of its DID document,
``iss`` = ``sub`` = the sender's DID, ``aud`` = the receiver's DID, a fresh ``jti`` and a short
``exp``. The same token is used whether the peer's keys are pinned in ``trust/`` or resolved
from its ``did.json``; either way the verifier hands ``verify_token`` a ``KeyRing`` of the JWKs
it trusts, keyed by absolute key id (``<did>#<fragment>``). Because a key id must lie under the
token's issuer, a key in the ring can only vouch for its own DID.

Time (``now``) and ids (``jti``) come in as arguments so that the checks are deterministic.
Replay protection (remembering ``jti`` until ``exp``) belongs to the service layer.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm
from jwt.exceptions import InvalidKeyError

from connector.core.codec import within_depth
from connector.core.errors import AuthError, ConfigError, ModesDiffer
from connector.core.messages import MAX_ID_LENGTH

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
# The keys we sign with: Ed25519 (EdDSA) or an EC key of a curve in _EC_ALGS (ES256 for P-256).
SigningKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey

DID_CONTEXTS = ("https://www.w3.org/ns/did/v1", "https://w3id.org/security/suites/jws-2020/v1")
# DCP 1.0 §4.3.3: a key that signs self-issued tokens needs the capabilityInvocation relationship.
KEY_RELATIONSHIPS = ("authentication", "assertionMethod", "capabilityInvocation")
# DSP 2025-1 §Catalog: the DataService that carries the connector's versioned DSP base URL.
DSP_SERVICE_TYPE = "DataService"
# DCP 1.0 §Credential Service endpoint discovery: the service type a verifier looks for.
CREDENTIAL_SERVICE_TYPE = "CredentialService"
# The longest self-issued token life a verifier accepts (ours default to [signing] token_ttl_s =
# 300 s, EDC's STS to 5 min): a jti is remembered until its token expires.
MAX_TOKEN_LIFETIME_S = 3600
# The self-issued token claim binding it to the request it came with: the SHA-256 (hex) of the
# body (of the empty body for a GET). Ours always carry it (docs/audit.md).
BODY_DIGEST_CLAIM = "body_sha256"

# RFC 7518 §3.4 / RFC 8812 §3.2: the JWS alg that goes with each curve, and its hash.
_EC_ALGS: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "secp256r1": ("ES256", hashes.SHA256),
    "secp384r1": ("ES384", hashes.SHA384),
    "secp521r1": ("ES512", hashes.SHA512),
    "secp256k1": ("ES256K", hashes.SHA256),
}


# --- did:web ----------------------------------------------------------------------------------


def did_web_from_url(url: str) -> str:
    """The did:web DID for an https URL (did:web method spec §3.2 "Create").

    The host is kept, the port's colon becomes ``%3A`` and each path segment becomes a
    ``:``-separated part: ``https://example.org:8443/a/b`` -> ``did:web:example.org%3A8443:a:b``.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"not an https URL: {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"a did:web URL has no user, query or fragment: {url!r}")
    host = parts.hostname.lower()
    authority = f"{host}:{parts.port}" if parts.port is not None else host
    segments = [quote(authority, safe="")]
    segments += [quote(s, safe="") for s in parts.path.split("/") if s]
    return "did:web:" + ":".join(segments)


def did_web_to_url(did: str, *, scheme: str = "https") -> str:
    """The URL of the DID document of a did:web DID (did:web method spec §3.2 "Read").

    The method-specific id is split on ``:``, each part percent-decoded (so a port written
    ``%3A`` becomes ``:``); without a path ``/.well-known`` is used; ``/did.json`` is appended:
    ``did:web:example.com%3A8443:tenants:acme`` -> ``https://example.com:8443/tenants/acme/did.json``.
    ``scheme="http"`` exists for test harnesses only (the DCP TCK serves its DIDs over HTTP).
    Raises AuthError for anything that is not a plain did:web DID.
    """
    if not did.startswith("did:web:"):
        raise AuthError(f"not a did:web DID: {did[:200]!r}")
    body = did.removeprefix("did:web:")
    # A DID URL's query or fragment is not part of the DID; a trailing ":" is an empty segment.
    if not body or any(c in body for c in "?#/") or body.endswith(":"):
        raise AuthError(f"malformed did:web DID: {did[:200]!r}")
    parts = [unquote(p) for p in body.split(":")]
    host, path = parts[0], parts[1:]
    bad_host = not host or any(c in host for c in "/@?#\\ ")
    bad_path = any(not p or p in (".", "..") or any(c in p for c in "/?#\\") for p in path)
    if bad_host or bad_path:
        raise AuthError(f"malformed did:web DID: {did[:200]!r}")
    tail = "/".join(quote(p, safe="") for p in path) if path else ".well-known"
    return f"{scheme}://{host}/{tail}/did.json"


# --- keys and DID documents -------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    # RFC 7515 §2: base64url without padding. The stdlib decoder skips characters outside the
    # alphabet and ignores a last character's spare bits, which would let several strings stand
    # for one token: accept only the canonical encoding (which also rules out stray characters).
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64url(data) != text:
        raise ValueError("not canonical base64url")
    return data


def public_jwk(key: Ed25519PrivateKey | Ed25519PublicKey) -> dict[str, str]:
    """The RFC 8037 OKP JWK of an Ed25519 key: ``{kty: OKP, crv: Ed25519, x}``."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}


# RFC 7518 §6.2.1.1: the JWK "crv" name of each curve we sign with.
_JWK_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521",
               "secp256k1": "secp256k1"}


def signing_public_jwk(key: SigningKey | PublicKey) -> dict[str, str]:
    """The public JWK of an Ed25519 key (RFC 8037 OKP) or an EC key (RFC 7518 §6.2, x and y)."""
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return public_jwk(key)
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    crv = _JWK_CURVES.get(public.curve.name)
    if crv is None:
        raise ConfigError(f"unsupported EC curve {public.curve.name}")
    size = (public.curve.key_size + 7) // 8
    numbers = public.public_numbers()
    return {"kty": "EC", "crv": crv, "x": _b64url(numbers.x.to_bytes(size, "big")),
            "y": _b64url(numbers.y.to_bytes(size, "big"))}


def signing_algorithm(key: SigningKey) -> str:
    """The JWS alg for a signing key: EdDSA for Ed25519, ES256 for P-256 (RFC 7518 §3.4)."""
    if isinstance(key, Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _EC_ALGS:
        return _EC_ALGS[key.curve.name][0]
    raise ConfigError("unsupported signing key (need Ed25519 or EC P-256/P-384/P-521)")


def _absolute_id(did: str, ref: str) -> str:
    # DID Core §3.2: a verification method id may be a relative DID URL ("#key-1").
    return did + ref if ref.startswith("#") else ref


def _relationship_ids(document: Mapping[str, Any], did: str, relationship: str) -> set[str] | None:
    """Absolute ids listed under ``relationship``; None when the document has no such entry.

    An empty list reads as an absent one: EDC IdentityHub 0.15.1 publishes every relationship as
    ``[]`` and signs with the key listed in ``verificationMethod`` (docs/interop-notes.md §4).
    """
    entries = document.get(relationship)
    if entries is None or entries == []:
        return None
    if not isinstance(entries, list):
        raise AuthError(f"DID document of {did}: {relationship} must be a list")
    ids = set()
    for entry in entries:
        ref = entry.get("id") if isinstance(entry, dict) else entry
        if isinstance(ref, str):
            ids.add(_absolute_id(did, ref))
    return ids


def _embedded_methods(document: Mapping[str, Any], relationship: str) -> list[Any]:
    # DID Core §5.3: a relationship may embed a whole verification method instead of a reference.
    entries = document.get(relationship)
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def document_keys(
    document: Mapping[str, Any], did: str, *, relationship: str = "capabilityInvocation"
) -> dict[str, dict[str, Any]]:
    """Absolute kid -> public JWK of the JsonWebKey2020-style methods of a resolved DID document.

    The document ``id`` must be ``did``; relative method ids (``#key-1``) are made absolute; a
    method id outside ``did`` or given twice is refused. When the document lists
    ``relationship`` (DCP 1.0: ``capabilityInvocation`` for self-issued tokens,
    ``assertionMethod`` for credentials, ``authentication`` for presentations), only the
    methods it names count; when it omits it or lists none, as EDC's documents may, every
    method counts (docs/interop-notes.md §4). Methods without ``publicKeyJwk`` are skipped.
    Raises AuthError.
    """
    if document.get("id") != did:
        raise AuthError(f"DID document id {str(document.get('id'))[:200]!r} is not {did!r}")
    methods = document.get("verificationMethod", [])
    if not isinstance(methods, list):
        raise AuthError(f"DID document of {did}: verificationMethod must be a list")
    allowed = _relationship_ids(document, did, relationship)
    keys: dict[str, dict[str, Any]] = {}
    for method in [*methods, *_embedded_methods(document, relationship)]:
        if not isinstance(method, dict) or not isinstance(method.get("id"), str):
            continue
        kid = _absolute_id(did, method["id"])
        if not kid.startswith(did + "#"):
            raise AuthError(f"DID document of {did}: method {kid[:200]!r} is not under the DID")
        if kid in keys:
            raise AuthError(f"DID document of {did}: method {kid[:200]!r} is listed twice")
        jwk = method.get("publicKeyJwk")
        if isinstance(jwk, dict) and (allowed is None or kid in allowed):
            keys[kid] = dict(jwk)
    return keys


def service_endpoint(document: Mapping[str, Any], service_type: str) -> str | None:
    """The ``serviceEndpoint`` URL of the first service of ``service_type``, or None."""
    services = document.get("service", [])
    for service in services if isinstance(services, list) else []:
        if not isinstance(service, dict):
            continue
        kind = service.get("type")
        kinds = kind if isinstance(kind, list) else [kind]
        endpoint = service.get("serviceEndpoint")
        if service_type in kinds and isinstance(endpoint, str):
            return endpoint
    return None


def with_credential_service(document: Mapping[str, Any], url: str) -> dict[str, Any]:
    """A copy of ``document`` whose ``CredentialService`` entry points at ``url`` (DCP §4.1)."""
    did = str(document.get("id", ""))
    services = [s for s in document.get("service", [])
                if not (isinstance(s, dict) and s.get("type") == CREDENTIAL_SERVICE_TYPE)]
    services.append({"id": f"{did}#credential-service", "type": CREDENTIAL_SERVICE_TYPE,
                     "serviceEndpoint": url})
    return {**document, "service": services}


def build_did_document(
    did: str, dsp_url: str, keys: Sequence[tuple[str, Mapping[str, Any]]]
) -> dict[str, Any]:
    """A DID document for ``did`` listing ``keys`` (absolute kid, public JWK) as JsonWebKey2020.

    Every key gets the authentication, assertionMethod and capabilityInvocation relationships;
    one ``DataService`` entry points at ``dsp_url``, the versioned DSP base URL.
    """
    methods = [
        {"id": kid, "type": "JsonWebKey2020", "controller": did, "publicKeyJwk": dict(jwk)}
        for kid, jwk in keys
    ]
    kids = [kid for kid, _ in keys]
    document: dict[str, Any] = {"@context": list(DID_CONTEXTS), "id": did}
    document["verificationMethod"] = methods
    for relationship in KEY_RELATIONSHIPS:
        document[relationship] = list(kids)
    document["service"] = [
        {"id": f"{did}#dsp", "type": DSP_SERVICE_TYPE, "serviceEndpoint": dsp_url}
    ]
    return document


def jwt_strings(value: Any, *, missing: str, not_jwt: str) -> list[str]:
    """The compact JWTs of a JSON value holding one JWT or a non-empty list of them (a VP's
    ``verifiableCredential``, a DCP PresentationResponseMessage's ``presentation``).

    AuthError ``missing`` when there is none, ``not_jwt`` when one is an embedded JSON object:
    an embedded proof (W3C VC Data Model 1.1 §4.7, Proofs) would need RDF canonicalisation,
    so only JWTs are accepted."""
    items = [value] if isinstance(value, str | dict) else value
    if not isinstance(items, list) or not items:
        raise AuthError(missing)
    if not all(isinstance(item, str) for item in items):
        raise AuthError(not_jwt)
    return list(items)


# --- self-issued ID tokens --------------------------------------------------------------------


def issue_token(key: SigningKey, *, kid: str, issuer: str, audience: str, now: int, jti: str,
                ttl_s: int, body_digest: str | None = None,
                access_token: str | None = None) -> str:
    """A self-issued ID token (DCP 1.0 §Self-Issued ID Tokens), ``ttl_s`` long.

    EdDSA-signed for an Ed25519 key, ES256/ES384/ES512 for an EC key (``signing_algorithm``).
    ``body_digest`` (the SHA-256, hex, of the request body the token goes with) becomes the
    ``body_sha256`` claim: the token then signs the message too (docs/audit.md).
    ``access_token`` becomes the DCP ``token`` claim (see ``issue_dcp_token``).
    """
    claims: dict[str, Any] = {"iss": issuer, "sub": issuer, "aud": audience, "jti": jti,
                              "iat": now, "exp": now + ttl_s}
    if access_token is not None:
        claims["token"] = access_token
    if body_digest is not None:
        claims[BODY_DIGEST_CLAIM] = body_digest
    return sign_jwt(key, kid=kid, claims=claims)


def sign_jwt(
    key: SigningKey, *, kid: str, claims: Mapping[str, Any], typ: str = "JWT"
) -> str:
    """A compact JWS of ``claims`` with header ``typ`` and ``kid``; alg from the key."""
    return jwt.encode(dict(claims), key, algorithm=signing_algorithm(key),
                      headers={"typ": typ, "kid": kid})


def issue_dcp_token(key: SigningKey, *, kid: str, issuer: str, audience: str, now: int,
                    jti: str, ttl_s: int, access_token: str,
                    body_digest: str | None = None) -> str:
    """A self-issued ID token carrying the DCP ``token`` claim (an access token for our CS).

    EDC refuses a self-issued token without a non-empty ``token`` (its TokenNotNullRule), so
    the DCP mode always sends one; the pinned mode uses ``issue_token`` without it.
    """
    if not access_token:
        raise ConfigError("a DCP self-issued token needs a non-empty access token")
    return issue_token(key, kid=kid, issuer=issuer, audience=audience, now=now, jti=jti,
                       ttl_s=ttl_s, body_digest=body_digest, access_token=access_token)


@dataclass(frozen=True)
class TokenClaims:
    """The claims of a verified self-issued token."""

    issuer: str
    audience: str
    jti: str
    issued_at: int
    expires_at: int
    kid: str
    # The body digest claim when it is a string (what the caller signed its body as), so the
    # receiver checks the body without decoding the token a second time.
    body_digest: str | None = None


@dataclass(frozen=True)
class _VerifyingKey:
    key: PublicKey
    alg: str
    hash_alg: type[hashes.HashAlgorithm] | None  # None for EdDSA


def _verifying_key(kid: str, jwk: Mapping[str, Any]) -> _VerifyingKey:
    """Convert one public JWK (OKP Ed25519 or EC); private material is refused."""
    if "d" in jwk:
        raise ConfigError(f"JWK of {kid} holds private key material")
    try:
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            okp = OKPAlgorithm.from_jwk(dict(jwk))
            if isinstance(okp, Ed25519PublicKey):
                return _VerifyingKey(okp, "EdDSA", None)
        elif jwk.get("kty") == "EC":
            key = ECAlgorithm.from_jwk(dict(jwk))
            if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGS:
                alg, hash_alg = _EC_ALGS[key.curve.name]
                return _VerifyingKey(key, alg, hash_alg)
    except (InvalidKeyError, ValueError, TypeError, binascii.Error) as exc:
        raise ConfigError(f"JWK of {kid} is invalid: {exc}") from exc
    raise ConfigError(f"JWK of {kid}: unsupported key type (need OKP Ed25519 or EC)")


class KeyRing:
    """Trusted public keys by absolute key id, converted from JWK once, at construction.

    Verification is the hot path (~110 µs a token), so lookups do no JWK parsing.
    Raises ConfigError naming the kid when a JWK cannot be used.
    """

    def __init__(self, jwks: Mapping[str, Mapping[str, Any]]) -> None:
        self._keys = {kid: _verifying_key(kid, jwk) for kid, jwk in jwks.items()}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def public_key(self, kid: str) -> PublicKey | None:
        """The public key for ``kid``, or None when the ring does not hold it."""
        entry = self._keys.get(kid)
        return entry.key if entry else None

    def _entry(self, kid: str) -> _VerifyingKey | None:
        return self._keys.get(kid)


def _split_jws(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, payload, signing input and signature of a compact JWS (RFC 7515 §7.1)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError("malformed token: not a compact JWS")
    try:
        header = json.loads(within_depth(_b64url_decode(parts[0])))
        payload = json.loads(within_depth(_b64url_decode(parts[1])))
        signature = _b64url_decode(parts[2])
    except (ValueError, binascii.Error) as exc:
        raise AuthError("malformed token: bad base64url or JSON") from exc
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise AuthError("malformed token: header and payload must be JSON objects")
    # RFC 7515 §4.1.11: we understand no extension, so any "crit" header is fatal.
    if "crit" in header:
        raise AuthError("malformed token: unsupported critical header")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return header, payload, signing_input, signature


def _check_signature(entry: _VerifyingKey, alg: object, data: bytes, signature: bytes) -> None:
    # The algorithm follows from the pinned key; the header may only confirm it (RFC 8725 §3.1).
    if alg != entry.alg:
        raise AuthError(f"signature invalid: alg {alg!r} does not match the key ({entry.alg})")
    try:
        if isinstance(entry.key, Ed25519PublicKey):
            entry.key.verify(signature, data)
        else:
            assert entry.hash_alg is not None
            size = (entry.key.curve.key_size + 7) // 8
            if len(signature) != 2 * size:
                raise InvalidSignature
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            der = encode_dss_signature(r, s)
            entry.key.verify(der, data, ec.ECDSA(entry.hash_alg()))
    except InvalidSignature:
        raise AuthError("signature invalid") from None


def _string_claim(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise AuthError(f"missing claim {name}")
    # A jti is stored and indexed: PostgreSQL's text cannot hold U+0000, nor its index a
    # long entry (MAX_ID_LENGTH); no DID or id needs either.
    if "\x00" in value or len(value) > MAX_ID_LENGTH:
        raise AuthError(f"claim {name} holds U+0000 or is longer than {MAX_ID_LENGTH}")
    return value


def _time_claim(payload: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(f"missing claim {name}" if value is None else f"claim {name} not a number")
    return int(value)


def _check_audience(payload: Mapping[str, Any], audience: str) -> None:
    aud = payload.get("aud")
    # RFC 7519 §4.1.3: aud is a string or an array of strings.
    ok = aud == audience or (isinstance(aud, list) and audience in aud)
    if not ok:
        raise AuthError(f"wrong audience: expected {audience!r}, got {str(aud)[:200]!r}")


def _check_times(payload: Mapping[str, Any], now: int, leeway_s: int) -> tuple[int, int]:
    expires_at = _time_claim(payload, "exp", required=True)
    issued_at = _time_claim(payload, "iat", required=True)
    not_before = _time_claim(payload, "nbf", required=False)
    assert expires_at is not None and issued_at is not None
    if now > expires_at + leeway_s:
        raise AuthError("token expired")
    if issued_at > now + leeway_s or (not_before is not None and not_before > now + leeway_s):
        raise AuthError("token not yet valid")
    return issued_at, expires_at


def verify_token(
    token: str, *, audience: str, now: int, leeway_s: int, keys: KeyRing
) -> TokenClaims:
    """Verify a self-issued ID token; raise AuthError naming the first failed check.

    Checks, in DCP 1.0 §Self-Issued ID Token validation order: a well-formed JWS; a header
    ``kid`` of the form ``<iss>#<fragment>`` (EDC's IssuerKeyIdValidationRule); ``iss == sub``;
    the signature with the ring's key for ``kid``; ``aud``; ``exp``/``iat``/``nbf`` against
    ``now`` with ``leeway_s``; a ``jti``. The token itself never appears in a message.
    """
    header, payload, signing_input, signature = _split_jws(token)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthError("malformed token: header has no kid")
    issuer = _string_claim(payload, "iss")
    prefix, sep, fragment = kid.partition("#")
    if not sep or not fragment or prefix != issuer:
        raise AuthError(f"key id {kid[:200]!r} is not under issuer {issuer[:200]!r}")
    if payload.get("sub") != issuer:
        raise AuthError("issuer and subject differ")
    entry = keys._entry(kid)
    if entry is None:
        raise AuthError(f"unknown key id {kid[:200]!r}")
    _check_signature(entry, header.get("alg"), signing_input, signature)
    _check_audience(payload, audience)
    issued_at, expires_at = _check_times(payload, now, leeway_s)
    jti = _string_claim(payload, "jti")
    digest = payload.get(BODY_DIGEST_CLAIM)
    return TokenClaims(issuer, audience, jti, issued_at, expires_at, kid,
                       digest if isinstance(digest, str) else None)


@dataclass(frozen=True)
class DcpTokenClaims(TokenClaims):
    """The claims of a verified DCP self-issued token, with its ``token`` claim."""

    access_token: str = field(kw_only=True)


def verify_dcp_token(
    token: str, *, audience: str, now: int, leeway_s: int, keys: KeyRing
) -> DcpTokenClaims:
    """``verify_token``, then require a non-empty string ``token`` claim (DCP mode)."""
    claims = verify_token(token, audience=audience, now=now, leeway_s=leeway_s, keys=keys)
    access_token = _split_jws(token)[1].get("token")
    if not isinstance(access_token, str) or not access_token:  # signed, in the other mode
        raise ModesDiffer("missing claim token (the DCP access token): identity modes differ: "
                          "the caller signs as a pinned peer, this participant verifies DCP "
                          "credentials; both sides need the same [identity] mode",
                          issuer=claims.issuer)
    return DcpTokenClaims(claims.issuer, claims.audience, claims.jti, claims.issued_at,
                          claims.expires_at, claims.kid, claims.body_digest,
                          access_token=access_token)


# --- any JWS: presentations and credentials ---------------------------------------------------


@dataclass(frozen=True)
class Jws:
    """A parsed, not yet verified, compact JWS."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) and kid else None


def parse_jws(token: str) -> Jws:
    """Split and decode a compact JWS; AuthError when malformed or with a ``crit`` header."""
    if not isinstance(token, str):
        raise AuthError("malformed token: not a string")
    return Jws(*_split_jws(token))


def _entry_for(key: PublicKey) -> _VerifyingKey:
    if isinstance(key, Ed25519PublicKey):
        return _VerifyingKey(key, "EdDSA", None)
    if key.curve.name in _EC_ALGS:
        alg, hash_alg = _EC_ALGS[key.curve.name]
        return _VerifyingKey(key, alg, hash_alg)
    raise AuthError(f"unsupported key curve {key.curve.name}")


def verify_jws_signature(jws: Jws, key: PublicKey) -> None:
    """Check ``jws``'s signature with ``key``; the header alg must be the key's (RFC 8725)."""
    _check_signature(_entry_for(key), jws.header.get("alg"), jws.signing_input, jws.signature)
