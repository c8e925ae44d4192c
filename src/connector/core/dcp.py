"""DCP 1.0 Credential Service messages, scopes and access tokens. Pure: no IO, no clock.

Theory of operation (DCP 1.0; docs/interop-notes.md §2). A consumer (holder) sends its DSP
request with a self-issued token whose ``token`` claim is an *access token*: a JWT the holder
signs for its own Credential Service, naming the verifier (``sub``) and the scopes it may ask
for. The provider (verifier) forwards that access token inside its own self-issued token to
``POST {credential service}/presentations/query`` with a ``PresentationQueryMessage`` listing
scopes. The holder's Credential Service checks the verifier's token and the access token, and
answers a ``PresentationResponseMessage`` with one VP JWT holding the stored VC JWTs that match
scopes both requested and granted (asking for more is not an error: fewer credentials come
back). Only scope queries are supported: a presentation definition is answered 501.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from connector.core.errors import AuthError, MalformedMessage, ProtocolError
from connector.core.identity import (
    KeyRing,
    SigningKey,
    jwt_strings,
    parse_jws,
    sign_jwt,
    verify_jws_signature,
)

DCP_CONTEXT = "https://w3id.org/dspace-dcp/v1.0/dcp.jsonld"
# EDC's DefaultCredentialServiceClient puts this context first (presentation exchange).
PRESENTATION_EXCHANGE_CONTEXT = "https://identity.foundation/presentation-exchange/submission/v1"
QUERY_TYPE = "PresentationQueryMessage"
RESPONSE_TYPE = "PresentationResponseMessage"
# DCP 1.0 §5.4.1.2 "Scopes": `alias:discriminator`; every Credential Service MUST support the
# `org.eclipse.dspace.dcp.vc.type` alias. EDC 0.14 (its IdentityHub, its default scopes) spells it
# `org.eclipse.edc.vc.type`; our Credential Service accepts either.
SPEC_SCOPE_ALIAS = "org.eclipse.dspace.dcp.vc.type"
EDC_SCOPE_ALIAS = "org.eclipse.edc.vc.type"
# The scope EDC consumers send by default.
MEMBERSHIP_SCOPE = f"{EDC_SCOPE_ALIAS}:MembershipCredential:read"
SCOPE_OPERATIONS = ("read", "write", "*", "all")


class UnsupportedQuery(ProtocolError, status=501, code="not-implemented"):
    """A presentation definition query: optional in DCP 1.0, not implemented (501)."""


@dataclass(frozen=True)
class Scope:
    """``alias:value[:operation]``; ``kind`` is "type" (``*.vc.type``) or "id" (``*.vc.id``)."""

    alias: str
    kind: str
    value: str
    operation: str


def parse_scope(text: str) -> Scope:
    """Parse a DCP scope tolerantly (docs/interop-notes.md §2, Scopes); MalformedMessage
    when it has no alias:value."""
    parts = text.split(":")
    operation = parts.pop() if len(parts) > 2 and parts[-1] in SCOPE_OPERATIONS else "read"
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise MalformedMessage(f"scope {text[:200]!r}: expected alias:value[:operation]", area=None)
    alias, value = parts[0], ":".join(parts[1:])
    kind = "id" if alias.endswith(".vc.id") else "type"
    return Scope(alias, kind, value, operation)


def type_scopes(types: Sequence[str], alias: str = SPEC_SCOPE_ALIAS) -> list[str]:
    """The read scopes for credentials of ``types`` under ``alias`` (DCP 1.0 §5.4.1.2)."""
    return [f"{alias}:{t}:read" for t in types]


def presentation_query(scopes: Sequence[str]) -> dict[str, Any]:
    """The PresentationQueryMessage a verifier sends (scope form, EDC's contexts)."""
    return {"@context": [PRESENTATION_EXCHANGE_CONTEXT, DCP_CONTEXT], "type": QUERY_TYPE,
            "scope": list(scopes)}


def parse_presentation_query(body: Any) -> tuple[Scope, ...]:
    """The scopes of a PresentationQueryMessage (DCP 1.0 §Resolution API).

    400 (MalformedMessage) when it is not one, has both or neither of ``scope`` and
    ``presentationDefinition``, or an empty one of them; 501 for a real presentation definition.
    """
    if not isinstance(body, dict):
        raise MalformedMessage("a PresentationQueryMessage must be a JSON object", area=None)
    kind = body.get("type", body.get("@type"))
    if kind not in (QUERY_TYPE, f"https://w3id.org/dspace-dcp/v1.0/{QUERY_TYPE}"):
        raise MalformedMessage(f"expected type {QUERY_TYPE}, got {str(kind)[:100]!r}", area=None)
    scope, definition = body.get("scope"), body.get("presentationDefinition")
    if scope is not None and definition is not None:
        raise MalformedMessage("a query has either scope or presentationDefinition, not both",
                               area=None)
    if definition is not None or "presentationDefinition" in body:
        # DCP-TCK: an empty or null definition is a 4xx, not a 501.
        if not definition:
            raise MalformedMessage("empty presentationDefinition", area=None)
        raise UnsupportedQuery("presentation definitions are not supported; query by scope",
                               area=None)
    if not isinstance(scope, list) or not scope or not all(isinstance(s, str) for s in scope):
        raise MalformedMessage("scope must be a non-empty list of strings", area=None)
    return tuple(parse_scope(s) for s in scope)


def _matches(credential: str, scope: Scope) -> bool:
    payload = parse_jws(credential).payload
    vc = payload.get("vc")
    vc = vc if isinstance(vc, dict) else {}
    if scope.kind == "id":
        return scope.value in (payload.get("jti"), vc.get("id"))
    types = vc.get("type", [])
    return scope.value in (types if isinstance(types, list) else [types])


def select_credentials(
    credentials: Sequence[str], requested: Sequence[Scope], granted: Collection[str] | None
) -> list[str]:
    """The stored VC JWTs matching a requested scope that the access token also ``granted``.

    ``granted`` holds scope strings as minted into the access token (None: no restriction,
    for the pinned mode). A scope granted under another alias still counts when alias-free
    parts (kind and value) agree, since EDC and the TCK spell aliases differently.
    """
    if granted is not None:
        allowed = {(s.kind, s.value) for s in map(parse_scope, granted)}
        requested = [s for s in requested if (s.kind, s.value) in allowed]
    return [c for c in credentials if any(_matches(c, s) for s in requested)]


def presentation_response(presentations: Sequence[str]) -> dict[str, Any]:
    """The PresentationResponseMessage a Credential Service answers (VP JWTs as strings)."""
    return {"@context": [DCP_CONTEXT], "type": RESPONSE_TYPE,
            "presentation": list(presentations)}


def parse_presentation_response(body: Any) -> list[str]:
    """The VP JWTs of a PresentationResponseMessage; AuthError for anything else."""
    if not isinstance(body, dict):
        raise AuthError("presentation response: not a JSON object")
    return jwt_strings(
        body.get("presentation"), missing="presentation response: no presentation",
        not_jwt="presentation response: only JWT presentations are supported")


# --- access tokens ------------------------------------------------------------------------------


def issue_access_token(
    key: SigningKey, *, kid: str, holder: str, verifier: str, scopes: Sequence[str], now: int,
    jti: str, ttl_s: int,
) -> str:
    """The access token for the ``token`` claim: lets ``verifier`` read ``scopes`` from our CS.

    Shaped as EDC's embedded STS does it (docs/interop-notes.md §2): ``iss`` = ``aud`` =
    holder, ``sub`` = verifier, ``scope`` = space-separated scopes.
    """
    claims = {"iss": holder, "sub": verifier, "aud": holder, "jti": jti, "iat": now,
              "exp": now + ttl_s, "scope": " ".join(scopes)}
    return sign_jwt(key, kid=kid, claims=claims)


def verify_access_token(
    token: str, *, holder: str, verifier: str, now: int, leeway_s: int, keys: KeyRing
) -> tuple[str, ...]:
    """The scopes an access token we minted grants ``verifier``; AuthError otherwise.

    ``keys`` are our own keys; ``verifier`` is the verified issuer of the self-issued token
    that forwarded it (DCP-TCK: an access token bound to another party is refused).
    """
    jws = parse_jws(token)
    kid = jws.kid or ""
    key = keys.public_key(kid) if kid.startswith(holder + "#") else None
    if key is None:
        raise AuthError("access token: not signed by one of our keys")
    verify_jws_signature(jws, key)
    payload = jws.payload
    if payload.get("iss") != holder or payload.get("aud") != holder:
        raise AuthError("access token: not issued for our Credential Service")
    if payload.get("sub") != verifier:
        raise AuthError("access token: bound to another verifier")
    exp, iat = payload.get("exp"), payload.get("iat", 0)
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise AuthError("access token: exp and iat must be numbers")
    if now > exp + leeway_s:
        raise AuthError("access token expired")
    if iat > now + leeway_s:
        raise AuthError("access token not yet valid")
    scope = payload.get("scope", "")
    return tuple(str(scope).split()) if isinstance(scope, str) else ()
