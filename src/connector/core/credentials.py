"""Verifiable credentials and presentations as JWTs, and status lists. Pure: no IO, no clock.

Theory of operation. An authority (issuer) signs a credential about a member (subject, holder):
a VC JWT in the VC Data Model 1.1 JWT encoding (§6.3.1: ``iss`` = issuer, ``sub`` =
``credentialSubject.id``, ``jti`` = credential id, ``nbf``/``exp`` = validity, the credential
itself under ``vc``). The holder wraps the VC JWTs it chooses to show into a VP JWT signed by
itself for one verifier (``iss`` = holder, ``aud`` = verifier, ``vp.verifiableCredential``).
The verifier checks, per DCP 1.0 §Presentation Validation and EDC's rules (docs/interop-notes.md
§5): the VP's signer is the holder that signed the DSP request, every VC is signed by its
issuer, the issuer is trusted for the credential's type, the subject is the holder, the
validity window holds, no status bit is set, and every required type is present.

Revocation uses a W3C Bitstring Status List (or its predecessor StatusList2021): the issuer
publishes a status-list credential whose ``encodedList`` is a GZIP-compressed bitstring; bit
``statusListIndex`` (counting from the left-most bit) set means revoked.

The caller does the IO: it fetches the DID documents and status lists ``references`` names
and passes them in as callables (``resolve_key``: kid -> public key, ``status_lists``: URL ->
decoded bitstring). Every refusal is an AuthError whose message names the check.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connector.core.errors import AuthError, ConfigError
from connector.core.identity import (
    Jws,
    PublicKey,
    SigningKey,
    jwt_strings,
    parse_jws,
    sign_jwt,
    verify_jws_signature,
)

VC_CONTEXT = "https://www.w3.org/2018/credentials/v1"
VC_TYPE = "VerifiableCredential"
VP_TYPE = "VerifiablePresentation"
MEMBERSHIP_CREDENTIAL = "MembershipCredential"
# W3C Bitstring Status List v1.0 §2.1 / §2.2 and its predecessor StatusList2021.
BITSTRING_CONTEXT = "https://www.w3.org/ns/credentials/status/v1"
BITSTRING_ENTRY = "BitstringStatusListEntry"
BITSTRING_CREDENTIAL = "BitstringStatusListCredential"
BITSTRING_LIST = "BitstringStatusList"
STATUSLIST2021_ENTRY = "StatusList2021Entry"
STATUSLIST2021_CREDENTIAL = "StatusList2021Credential"
STATUS_ENTRY_TYPES = (BITSTRING_ENTRY, STATUSLIST2021_ENTRY)
STATUS_LIST_CREDENTIAL_TYPES = (BITSTRING_CREDENTIAL, STATUSLIST2021_CREDENTIAL)
STATUS_PURPOSES = ("revocation", "suspension")
# Bitstring Status List §4.1 (herd privacy): at least 131,072 entries, i.e. 16 KB.
MIN_STATUS_LIST_BITS = 131_072
# A decompressed list larger than this is refused (a GZIP bomb would otherwise expand freely).
MAX_STATUS_LIST_BYTES = 16 * 1024 * 1024
# A trusted-issuers entry allowing every credential type (EDC's supportedtypes default "*").
ANY_TYPE = "*"

KeyResolver = Callable[[str], PublicKey | None]
StatusLists = Callable[[str], bytes | None]


# --- status lists -------------------------------------------------------------------------------


def new_status_list(size_bits: int = MIN_STATUS_LIST_BITS) -> bytes:
    """An all-zero bitstring of ``size_bits`` bits (a multiple of 8)."""
    if size_bits <= 0 or size_bits % 8:
        raise ConfigError(f"status list size {size_bits}: must be a positive multiple of 8")
    return bytes(size_bits // 8)


def get_status(bits: bytes, index: int) -> bool:
    """Bit ``index`` of ``bits``, counting from the left-most bit of the first byte (§4.2)."""
    if not 0 <= index < len(bits) * 8:
        raise AuthError(f"status list index {index} out of range")
    return bool(bits[index // 8] & (0x80 >> (index % 8)))


def set_status(bits: bytes, index: int, value: bool = True) -> bytes:
    """A copy of ``bits`` with bit ``index`` set to ``value``."""
    if not 0 <= index < len(bits) * 8:
        raise ConfigError(f"status list index {index} out of range")
    out = bytearray(bits)
    mask = 0x80 >> (index % 8)
    out[index // 8] = out[index // 8] | mask if value else out[index // 8] & ~mask
    return bytes(out)


def encode_status_list(bits: bytes) -> str:
    """``encodedList``: multibase ``u`` + base64url (no padding) of the GZIP'd bitstring (§2.1).

    ``mtime=0`` makes the output depend on the bits only.
    """
    packed = gzip.compress(bits, mtime=0)
    return "u" + base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")


def decode_status_list(encoded: str) -> bytes:
    """The bitstring of an ``encodedList``; AuthError when it cannot be decoded.

    Lenient on input: the multibase ``u`` is optional (StatusList2021 lists are plain
    base64url), padding and the standard base64 alphabet are accepted. Base58 (``z``) is not.
    """
    # GZIP data starts with 0x1f 0x8b, so its base64 starts with "H4sI": a leading "u" can
    # only be the multibase prefix.
    text = encoded.strip().removeprefix("u")
    text = text.replace("+", "-").replace("/", "_").rstrip("=")
    try:
        packed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # GZIP framing
        bits = inflater.decompress(packed, MAX_STATUS_LIST_BYTES)
    except (binascii.Error, ValueError, zlib.error) as exc:
        raise AuthError("status list cannot be decoded") from exc
    if inflater.unconsumed_tail:
        raise AuthError("status list too large")
    return bits


# --- issuing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusEntry:
    """Where a credential's status bit lives (Bitstring Status List §2.1 credentialStatus)."""

    list_url: str
    index: int
    purpose: str = "revocation"
    type: str = BITSTRING_ENTRY

    def as_json(self) -> dict[str, Any]:
        return {
            "id": f"{self.list_url}#{self.index}",
            "type": self.type,
            "statusPurpose": self.purpose,
            # §2.1: statusListIndex is a string holding a decimal integer.
            "statusListIndex": str(self.index),
            "statusListCredential": self.list_url,
        }


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def issue_credential(
    key: SigningKey,
    *,
    kid: str,
    issuer: str,
    subject: str,
    credential_id: str,
    now: int,
    valid_s: int,
    types: Sequence[str] = (MEMBERSHIP_CREDENTIAL,),
    attributes: Mapping[str, Any] | None = None,
    status: StatusEntry | None = None,
) -> str:
    """A VC JWT (VC Data Model 1.1 §6.3.1) valid from ``now`` for ``valid_s`` seconds.

    The registered claims mirror the credential (iss/issuer, sub/credentialSubject.id,
    jti/id, nbf/issuanceDate, exp/expirationDate) so that EDC, which reads ``vc``, and JWT
    libraries, which read the claims, see the same thing.
    """
    attributes = dict(attributes or {})
    if "id" in attributes:
        raise ConfigError("a credential attribute may not be called 'id' (it is the subject)")
    credential: dict[str, Any] = {
        "@context": [VC_CONTEXT] + ([BITSTRING_CONTEXT] if status else []),
        "id": credential_id,
        "type": [VC_TYPE, *[t for t in types if t != VC_TYPE]],
        "issuer": issuer,
        "issuanceDate": _iso(now),
        "expirationDate": _iso(now + valid_s),
        "credentialSubject": {"id": subject, **attributes},
    }
    if status is not None:
        credential["credentialStatus"] = status.as_json()
    claims = {"iss": issuer, "sub": subject, "jti": credential_id, "iat": now, "nbf": now,
              "exp": now + valid_s, "vc": credential}
    return sign_jwt(key, kid=kid, claims=claims)


def issue_presentation(
    key: SigningKey,
    *,
    kid: str,
    holder: str,
    audience: str,
    credentials: Sequence[str],
    now: int,
    jti: str,
    ttl_s: int,
) -> str:
    """A VP JWT (VC Data Model 1.1 §6.3.1) showing ``credentials`` (VC JWTs) to ``audience``."""
    presentation = {
        "@context": [VC_CONTEXT],
        "type": [VP_TYPE],
        "holder": holder,
        "verifiableCredential": list(credentials),
    }
    claims = {"iss": holder, "sub": holder, "aud": audience, "jti": jti, "iat": now,
              "nbf": now, "exp": now + ttl_s, "vp": presentation}
    return sign_jwt(key, kid=kid, claims=claims)


def issue_status_list_credential(
    key: SigningKey,
    *,
    kid: str,
    issuer: str,
    url: str,
    bits: bytes,
    now: int,
    valid_s: int,
    purpose: str = "revocation",
) -> str:
    """The status-list credential served at ``url`` (Bitstring Status List §2.2), as a VC JWT."""
    credential = {
        "@context": [VC_CONTEXT, BITSTRING_CONTEXT],
        "id": url,
        "type": [VC_TYPE, BITSTRING_CREDENTIAL],
        "issuer": issuer,
        "issuanceDate": _iso(now),
        "expirationDate": _iso(now + valid_s),
        "credentialSubject": {"id": f"{url}#list", "type": BITSTRING_LIST,
                              "statusPurpose": purpose, "encodedList": encode_status_list(bits)},
    }
    claims = {"iss": issuer, "sub": f"{url}#list", "jti": url, "iat": now, "nbf": now,
              "exp": now + valid_s, "vc": credential}
    return sign_jwt(key, kid=kid, claims=claims)


# --- reading, before verification ---------------------------------------------------------------


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AuthError(f"malformed {what}: not a JSON object")
    return value


def _vc(jws: Jws) -> dict[str, Any]:
    return _object(jws.payload.get("vc"), "credential (no vc claim)")


def _subject(vc: Mapping[str, Any]) -> dict[str, Any]:
    subject = vc.get("credentialSubject")
    if isinstance(subject, list) and len(subject) == 1:
        subject = subject[0]
    return _object(subject, "credential (credentialSubject)")


def _types(vc: Mapping[str, Any]) -> tuple[str, ...]:
    types = vc.get("type")
    types = [types] if isinstance(types, str) else types
    if not isinstance(types, list) or VC_TYPE not in types:
        raise AuthError("malformed credential: type must include VerifiableCredential")
    return tuple(t for t in types if isinstance(t, str) and t != VC_TYPE)


def _status_entries(vc: Mapping[str, Any]) -> list[dict[str, Any]]:
    status = vc.get("credentialStatus")
    if status is None:
        return []
    entries = status if isinstance(status, list) else [status]
    return [_object(e, "credentialStatus") for e in entries]


def _presentation_credentials(jws: Jws) -> list[str]:
    vp = _object(jws.payload.get("vp"), "presentation (no vp claim)")
    return jwt_strings(
        vp.get("verifiableCredential"), missing="presentation holds no credentials",
        not_jwt="presentation holds a non-JWT credential (only JWT credentials)")


@dataclass(frozen=True)
class References:
    """What the caller must fetch before verifying: key ids (their DIDs) and status lists."""

    key_ids: tuple[str, ...]
    status_lists: tuple[str, ...]

    @property
    def dids(self) -> tuple[str, ...]:
        """The DIDs whose documents hold ``key_ids``, in order, each once."""
        return tuple(dict.fromkeys(kid.partition("#")[0] for kid in self.key_ids))


def references(presentations: Sequence[str]) -> References:
    """The key ids and status-list URLs named by ``presentations`` (VP JWTs), unverified.

    For the IO shell: fetch only the DIDs of the holder and of trusted issuers, then verify.
    """
    kids: list[str] = []
    urls: list[str] = []
    for token in presentations:
        jws = parse_jws(token)
        kids.append(jws.kid or "")
        for credential in _presentation_credentials(jws):
            vc_jws = parse_jws(credential)
            kids.append(vc_jws.kid or "")
            for entry in _status_entries(_vc(vc_jws)):
                url = entry.get("statusListCredential")
                urls.append(url if isinstance(url, str) else "")
    return References(tuple(dict.fromkeys(k for k in kids if k)),
                      tuple(dict.fromkeys(u for u in urls if u)))


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedCredential:
    """One credential whose every check passed."""

    id: str
    issuer: str
    subject: str
    types: tuple[str, ...]
    attributes: Mapping[str, Any]
    expires_at: int | None


@dataclass(frozen=True)
class VerifiedClaims:
    """What the verified presentations say about the holder, for the policy engine."""

    participant_id: str
    membership: str | None  # "active" when a valid MembershipCredential was shown
    credential_types: tuple[str, ...]
    issuers: tuple[str, ...]
    attributes: Mapping[str, Any]  # the credentialSubject attributes, merged, first wins
    credentials: tuple[VerifiedCredential, ...] = field(default=(), repr=False)

    def policy_attributes(self) -> dict[str, Any]:
        """The claims as ``service.catalog.Claims.attributes``: subject attributes, then ours."""
        out = dict(self.attributes)
        if self.membership is not None:
            out["membership"] = self.membership
        out["credential_types"] = list(self.credential_types)
        out["issuers"] = list(self.issuers)
        return out


def _signed_by(jws: Jws, issuer: str, resolve_key: KeyResolver, what: str) -> None:
    """The JWS's kid lies under ``issuer`` (EDC's <iss># rule) and its signature verifies."""
    kid = jws.kid or ""
    prefix, sep, fragment = kid.partition("#")
    if not sep or not fragment or prefix != issuer:
        raise AuthError(f"{what}: key id {kid[:200]!r} is not under {issuer[:200]!r}")
    key = resolve_key(kid)
    if key is None:
        raise AuthError(f"{what}: unknown key id {kid[:200]!r}")
    try:
        verify_jws_signature(jws, key)
    except AuthError as exc:
        raise AuthError(f"{what}: {exc.message}") from None


def _issuer(jws: Jws, vc: Mapping[str, Any]) -> str:
    issuer = jws.payload.get("iss")
    declared = vc.get("issuer", issuer)
    declared = declared.get("id") if isinstance(declared, dict) else declared
    if not isinstance(issuer, str) or not issuer or declared != issuer:
        raise AuthError("malformed credential: iss and vc.issuer must name the same DID")
    return issuer


def _seconds(
    payload: Mapping[str, Any], claim: str, vc: Mapping[str, Any], prop: str
) -> int | None:
    value = payload.get(claim)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    text = vc.get(prop)
    if not isinstance(text, str):
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise AuthError(f"malformed credential: {prop} is not a date") from None


def _check_window(start: int | None, end: int | None, now: int, leeway_s: int, what: str) -> None:
    if end is not None and now > end + leeway_s:
        raise AuthError(f"{what} expired")
    if start is not None and start > now + leeway_s:
        raise AuthError(f"{what} not yet valid")


def _check_trusted(issuer: str, types: tuple[str, ...],
                   trusted_issuers: Mapping[str, Collection[str]]) -> None:
    # EDC's HasValidIssuer: the issuer must be listed for at least one of the credential's types.
    allowed = trusted_issuers.get(issuer, ())
    if ANY_TYPE not in allowed and not any(t in allowed for t in types):
        raise AuthError(f"untrusted issuer {issuer[:200]!r} for {list(types)}")


def _status_index(entry: Mapping[str, Any]) -> int:
    index = entry.get("statusListIndex")
    if isinstance(index, str) and index.isdecimal():
        return int(index)
    if isinstance(index, int) and not isinstance(index, bool):
        return index
    raise AuthError("malformed credentialStatus: statusListIndex must be an integer")


def _check_status(vc: Mapping[str, Any], credential_id: str, status_lists: StatusLists) -> None:
    for entry in _status_entries(vc):
        if entry.get("type") not in STATUS_ENTRY_TYPES:
            raise AuthError(f"unsupported credentialStatus type {str(entry.get('type'))[:100]!r}")
        purpose = entry.get("statusPurpose", "revocation")
        url = entry.get("statusListCredential")
        if purpose not in STATUS_PURPOSES or not isinstance(url, str):
            raise AuthError("malformed credentialStatus: statusPurpose or statusListCredential")
        bits = status_lists(url)
        if bits is None:
            raise AuthError(f"credential status unknown: status list {url[:200]!r} unavailable")
        if get_status(bits, _status_index(entry)):
            word = "revoked" if purpose == "revocation" else "suspended"
            raise AuthError(f"credential {word}: {credential_id[:200]}")


def verify_credential(
    token: str,
    *,
    holder: str,
    now: int,
    leeway_s: int,
    resolve_key: KeyResolver,
    trusted_issuers: Mapping[str, Collection[str]],
    status_lists: StatusLists,
) -> VerifiedCredential:
    """Verify one VC JWT held by ``holder``; AuthError names the first failed check.

    Checks, in order: well-formed VC; issuer trusted for one of its types (before any key of an
    untrusted issuer is looked at); signature by a key of the issuer; subject is ``holder``
    (DCP holder binding, EDC derives the participant from it); validity window with
    ``leeway_s``; no revocation or suspension bit set.
    """
    jws = parse_jws(token)
    vc = _vc(jws)
    issuer = _issuer(jws, vc)
    types = _types(vc)
    _check_trusted(issuer, types, trusted_issuers)
    _signed_by(jws, issuer, resolve_key, "credential")
    subject = _subject(vc)
    sub = jws.payload.get("sub", subject.get("id"))
    if subject.get("id") != holder or sub != holder:
        raise AuthError("credential subject does not match the holder")
    start = _seconds(jws.payload, "nbf", vc, "issuanceDate")
    end = _seconds(jws.payload, "exp", vc, "expirationDate")
    _check_window(start, end, now, leeway_s, "credential")
    credential_id = str(jws.payload.get("jti") or vc.get("id") or "")
    _check_status(vc, credential_id, status_lists)
    attributes = {k: v for k, v in subject.items() if k != "id"}
    return VerifiedCredential(credential_id, issuer, holder, types, attributes, end)


def _verify_presentation(token: str, *, holder: str, audience: str, now: int, leeway_s: int,
                         resolve_key: KeyResolver) -> list[str]:
    jws = parse_jws(token)
    if jws.payload.get("iss") != holder:
        raise AuthError("holder does not match the token issuer")
    _signed_by(jws, holder, resolve_key, "presentation")
    aud = jws.payload.get("aud")
    if aud != audience and not (isinstance(aud, list) and audience in aud):
        raise AuthError(f"presentation wrong audience: expected {audience!r}")
    exp = jws.payload.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise AuthError("presentation has no exp")
    start = jws.payload.get("nbf", jws.payload.get("iat"))
    start = int(start) if isinstance(start, int | float) else None
    _check_window(start, int(exp), now, leeway_s, "presentation")
    return _presentation_credentials(jws)


def verify_presentations(
    presentations: Sequence[str],
    *,
    holder: str,
    audience: str,
    now: int,
    leeway_s: int,
    resolve_key: KeyResolver,
    trusted_issuers: Mapping[str, Collection[str]],
    status_lists: StatusLists,
    required_types: Collection[str] = (),
) -> VerifiedClaims:
    """Verify the VP JWTs of one PresentationResponseMessage; return the holder's claims.

    ``holder`` is the verified issuer of the DSP request's self-issued token and ``audience``
    our own DID. Each VP: signed by the holder (``iss`` = ``holder``, kid under it), ``aud`` =
    ``audience``, ``exp`` required, window with ``leeway_s``. Each VC: ``verify_credential``.
    Then every ``required_types`` entry must be among the credentials' types.
    """
    if not presentations:
        raise AuthError("no presentation")
    verified: list[VerifiedCredential] = []
    for token in presentations:
        for credential in _verify_presentation(token, holder=holder, audience=audience, now=now,
                                               leeway_s=leeway_s, resolve_key=resolve_key):
            verified.append(verify_credential(
                credential, holder=holder, now=now, leeway_s=leeway_s, resolve_key=resolve_key,
                trusted_issuers=trusted_issuers, status_lists=status_lists))
    types = tuple(dict.fromkeys(t for c in verified for t in c.types))
    for required in required_types:
        if required not in types:
            raise AuthError(f"missing required credential type {required!r}")
    attributes: dict[str, Any] = {}
    for shown in verified:
        for name, value in shown.attributes.items():
            attributes.setdefault(name, value)
    return VerifiedClaims(
        participant_id=holder,
        membership="active" if MEMBERSHIP_CREDENTIAL in types else None,
        credential_types=types,
        issuers=tuple(dict.fromkeys(c.issuer for c in verified)),
        attributes=attributes,
        credentials=tuple(verified),
    )


def verify_presentation(presentation: str, **kwargs: Any) -> VerifiedClaims:
    """``verify_presentations`` for a single VP JWT (same keyword arguments)."""
    return verify_presentations([presentation], **kwargs)


def verify_status_list_credential(
    token: str,
    *,
    issuer: str,
    url: str,
    now: int,
    leeway_s: int,
    resolve_key: KeyResolver,
    purpose: str = "revocation",
) -> bytes:
    """The bitstring of the status-list credential fetched from ``url``, once verified.

    It must be signed by ``issuer`` (the issuer of the credentials pointing at it: nobody else
    may revoke them), be a Bitstring/StatusList2021 credential for ``purpose``, name ``url``
    as its id when it names one, and be inside its validity window.
    """
    jws = parse_jws(token)
    vc = _vc(jws)
    if _issuer(jws, vc) != issuer:
        raise AuthError(f"status list {url[:200]!r} is not issued by {issuer[:200]!r}")
    _signed_by(jws, issuer, resolve_key, "status list")
    if not any(t in STATUS_LIST_CREDENTIAL_TYPES for t in _types(vc)):
        raise AuthError("status list: not a BitstringStatusListCredential")
    if vc.get("id", url) != url:
        raise AuthError(f"status list: id is not {url[:200]!r}")
    subject = _subject(vc)
    if subject.get("statusPurpose", purpose) != purpose:
        raise AuthError(f"status list: purpose is not {purpose}")
    start = _seconds(jws.payload, "nbf", vc, "issuanceDate")
    end = _seconds(jws.payload, "exp", vc, "expirationDate")
    _check_window(start, end, now, leeway_s, "status list")
    encoded = subject.get("encodedList")
    if not isinstance(encoded, str):
        raise AuthError("status list: no encodedList")
    return decode_status_list(encoded)
