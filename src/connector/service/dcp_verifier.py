"""DCP mode: who is calling, proven by a resolved did:web key and verifiable credentials.

Theory of operation (DCP 1.0 §Resolution API; docs/interop-notes.md §2). A DSP request
carries a self-issued token signed with a key of the caller's DID document and, in its
``token`` claim, an access token for the caller's Credential Service.
``DcpVerifier.verify_async``, before the body is read:

1. resolves the caller's ``did.json`` (cached ``did_cache_s``; refetched early, at most every
   few seconds, when the token names a key the cached copy lacks, so that a rotated key works),
   checks the token (``verify_dcp_token``) and remembers its ``jti``;
2. unless claims about this caller are cached, POSTs a presentation query for the required
   credential types to the ``CredentialService`` of that document, with our own token that
   forwards the caller's access token;
3. fetches the DID documents of the presentation's holder and of *trusted* issuers only (an
   untrusted issuer is refused before anything of it is fetched), and each status list the
   credentials point at (verified, cached for ``min(status_cache_s, max-age)``);
4. verifies presentations and credentials (``verify_presentations``) and returns
   ``Claims(caller DID, policy attributes)``.

Verified claims are reused for the same caller until the first status list they relied on
expires from the cache (and never longer than ``status_cache_s``): a negotiation's few
messages fetch one presentation, and a revoked member is refused within ``status_cache_s``.
Every failure is an AuthError; nothing is persisted but the seen jtis (``Verifier._remember``,
written behind to the store so that a replay is refused across a restart). The network sits
behind ``Http`` (an adapter), so this module stays free of aiohttp.

``CredentialService`` is the holder side: it answers a verifier's presentation query with one
VP holding the credentials of ``credentials/`` that the access token grants.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from connector.core import credentials as vc
from connector.core import dcp
from connector.core.codec import within_depth
from connector.core.errors import AuthError, ConfigError, ConnectorError
from connector.core.identity import (
    CREDENTIAL_SERVICE_TYPE,
    DcpTokenClaims,
    KeyRing,
    PublicKey,
    did_web_to_url,
    document_keys,
    parse_jws,
    service_endpoint,
    verify_dcp_token,
)
from connector.service.auth import Identity, Verifier, verified_token
from connector.service.catalog import Claims

log = logging.getLogger("connector.dcp")

# DID documents and status lists are small; anything larger is refused unread.
MAX_DID_DOCUMENT_BYTES = 256 * 1024
MAX_PRESENTATION_BYTES = 1024 * 1024
MAX_STATUS_LIST_BYTES = 1024 * 1024
# A token naming a key the cached document lacks triggers a refetch at most this often per DID.
MIN_REFETCH_S = 2.0
# Bounds on what is cached (oldest entries dropped first).
MAX_CACHED = 10_000
V = TypeVar("V")


class Http(Protocol):
    """The network, as the verifier needs it. Every failure is raised as AuthError."""

    async def get(self, url: str, *, max_bytes: int) -> tuple[bytes, Mapping[str, str]]:
        """The body and headers of a 200 answer to GET ``url`` (no redirects followed)."""
        ...

    async def post_json(self, url: str, body: bytes, *, authorization: str,
                        max_bytes: int) -> bytes:
        """The body of a 200 answer to a JSON POST to ``url``."""
        ...


def max_age(headers: Mapping[str, str]) -> int | None:
    """The ``max-age`` of a Cache-Control header, if any."""
    for part in headers.get("Cache-Control", headers.get("cache-control", "")).split(","):
        name, _, value = part.strip().partition("=")
        if name.lower() == "max-age" and value.strip().isdecimal():
            return int(value.strip())
    return None


async def fetch_status_list(http: Http, resolver: DidResolver, url: str, *, issuer: str,
                            now: int, leeway_s: int, purpose: str = "revocation"
                            ) -> tuple[bytes, Mapping[str, str]]:
    """The bits of the status list at ``url``, verified as signed by ``issuer`` (nobody else
    may revoke its credentials), and the answer's headers. AuthError names what failed."""
    body, headers = await http.get(url, max_bytes=MAX_STATUS_LIST_BYTES)
    ring = await resolver.keys(issuer, "assertionMethod")
    bits = vc.verify_status_list_credential(
        body.decode("utf-8", "replace").strip(), issuer=issuer, url=url, now=now,
        leeway_s=leeway_s, resolve_key=ring.public_key, purpose=purpose)
    return bits, headers


class _Cache(Generic[V]):
    """Values with an expiry, a size bound, and one in-flight load per key."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._values: dict[str, tuple[float, float, V]] = {}  # key -> (loaded, expires, value)
        self._loading: dict[str, asyncio.Future[tuple[float, V]]] = {}

    def get(self, key: str) -> tuple[float, float, V] | None:
        """(loaded at, expires at, value) when fresh."""
        entry = self._values.get(key)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry

    def put(self, key: str, value: V, ttl_s: float) -> None:
        now = self._clock()
        self._values.pop(key, None)
        if ttl_s > 0:
            self._values[key] = (now, now + ttl_s, value)
        while len(self._values) > MAX_CACHED:
            self._values.pop(next(iter(self._values)))

    def drop(self, key: str) -> None:
        self._values.pop(key, None)

    async def load(self, key: str, loader: Callable[[], Awaitable[tuple[float, V]]]) -> V:
        """The cached value, or ``loader()``'s (value, ttl) — shared by concurrent callers."""
        hit = self.get(key)
        if hit is not None:
            return hit[2]
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(loader())
            self._loading[key] = pending
            pending.add_done_callback(lambda _: self._loading.pop(key, None))
        ttl, value = await asyncio.shield(pending)
        self.put(key, value, ttl)
        return value


class DidResolver:
    """did:web documents over HTTPS, cached ``cache_s`` (W3C did:web method;
    docs/interop-notes.md §3)."""

    def __init__(self, http: Http, *, cache_s: int, clock: Callable[[], float],
                 scheme: str = "https") -> None:
        self._http = http
        self._cache_s = cache_s
        self._clock = clock
        self._scheme = scheme
        self._docs: _Cache[dict[str, Any]] = _Cache(clock)

    async def document(self, did: str) -> dict[str, Any]:
        url = did_web_to_url(did, scheme=self._scheme)  # AuthError for a non-did:web DID

        async def fetch() -> tuple[float, dict[str, Any]]:
            body, _ = await self._http.get(url, max_bytes=MAX_DID_DOCUMENT_BYTES)
            try:
                doc = json.loads(within_depth(body))
            except ValueError:
                raise AuthError(f"DID document of {did[:200]}: not JSON") from None
            if not isinstance(doc, dict) or doc.get("id") != did:
                raise AuthError(f"DID document at {url[:200]} is not the document of {did[:200]}")
            return float(self._cache_s), doc

        return await self._docs.load(did, fetch)

    def cached(self, did: str) -> dict[str, Any] | None:
        """The document last fetched for ``did`` (what its caller's token was checked with)."""
        hit = self._docs.get(did)
        return hit[2] if hit is not None else None

    async def keys(self, did: str, relationship: str, *, want: str | None = None) -> KeyRing:
        """The keys of ``did`` for ``relationship``; refetch once if ``want`` is missing."""
        ring = _ring(await self.document(did), did, relationship)
        if want is None or want in ring:
            return ring
        hit = self._docs.get(did)
        if hit is not None and self._clock() - hit[0] >= MIN_REFETCH_S:
            self._docs.drop(did)  # a rotated key: the cached copy may predate it
            ring = _ring(await self.document(did), did, relationship)
        return ring


def _ring(document: dict[str, Any], did: str, relationship: str) -> KeyRing:
    """The keys of a resolved DID document. A key we cannot use there is the caller's
    problem (AuthError), not a setting of ours (KeyRing raises ConfigError, as it does for
    the keys of trust/)."""
    try:
        return KeyRing(document_keys(document, did, relationship=relationship))
    except ConfigError as exc:
        raise AuthError(f"DID document of {did[:200]}: {exc.message}") from exc


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing Authorization header")
    # EDC's DcpIdentityService (and the DCP TCK) refuse a token without the Bearer prefix.
    if authorization[:7].lower() != "bearer ":
        raise AuthError("Authorization is not a Bearer token")
    return authorization[7:].strip()


def _status_pointers(presentations: Sequence[str]) -> dict[str, set[str]]:
    """status-list URL -> issuers of the credentials pointing at it (unverified)."""
    out: dict[str, set[str]] = {}
    for token in presentations:
        vp = parse_jws(token).payload.get("vp")
        creds = vp.get("verifiableCredential", []) if isinstance(vp, dict) else []
        for credential in creds if isinstance(creds, list) else [creds]:
            if not isinstance(credential, str):
                continue
            payload = parse_jws(credential).payload
            body = payload.get("vc")
            status = body.get("credentialStatus", []) if isinstance(body, dict) else []
            for entry in status if isinstance(status, list) else [status]:
                url = entry.get("statusListCredential") if isinstance(entry, dict) else None
                if isinstance(url, str) and isinstance(payload.get("iss"), str):
                    out.setdefault(url, set()).add(payload["iss"])
    return out


class DcpVerifier(Verifier):
    """Verifies DSP callers by DCP: resolved keys, a presentation, trusted issuers, status."""

    def __init__(self, *, identity: Identity, resolver: DidResolver, http: Http,
                 trusted_issuers: Mapping[str, Collection[str]],
                 required_types: Sequence[str], leeway_s: int, status_cache_s: int,
                 clock: Callable[[], float], scope_alias: str = dcp.SPEC_SCOPE_ALIAS) -> None:
        super().__init__(did=identity.did, peers={}, leeway_s=leeway_s, clock=clock)
        self._identity = identity
        self._resolver = resolver
        self._http = http
        self._status: _Cache[bytes] = _Cache(clock)
        self._last: dict[str, Claims] = {}  # caller DID -> last verified claims
        self.reload_identity(trusted_issuers=trusted_issuers, required_types=required_types,
                             scope_alias=scope_alias, status_cache_s=status_cache_s)

    def reload_identity(self, *, trusted_issuers: Mapping[str, Collection[str]],
                        required_types: Sequence[str], scope_alias: str,
                        status_cache_s: int) -> None:
        """Take new ``[identity]`` settings (connector.toml changed) without a restart.

        Claims verified under the previous settings are dropped, so that a caller whose issuer
        is no longer trusted is refused on its next request, and the data plane no longer
        grants it on claims its issuer made; seen token ids are kept.
        """
        self._trusted = {did: tuple(types) for did, types in trusted_issuers.items()}
        self._required = tuple(required_types)
        self._scopes = dcp.type_scopes(self._required, scope_alias)
        self._status_cache_s = status_cache_s
        self._claims: _Cache[Claims] = _Cache(self._clock)
        for did, claims in list(self._last.items()):
            issuers = claims.attributes.get("issuers", [])
            if not isinstance(issuers, list) or any(i not in self._trusted for i in issuers):
                del self._last[did]

    def requires_binding(self, did: str) -> bool:
        """DCP peers (EDC) send no body digest claim: a token without it is marked unbound."""
        return False

    def peer_document(self, did: str) -> dict[str, Any] | None:
        return self._resolver.cached(did)

    def last_claims(self, did: str) -> Claims | None:
        """The claims last verified for ``did`` (the data plane checks pulls against them)."""
        return self._last.get(did)

    def verify(self, authorization: str | None) -> Claims:
        raise AuthError("DCP mode verifies callers asynchronously (verify_async)")

    async def verify_token(self, authorization: str | None) -> DcpTokenClaims:
        """Check the caller's self-issued token against its resolved DID document."""
        token = _bearer(authorization)
        jws = parse_jws(token)
        issuer, kid = jws.payload.get("iss"), jws.kid or ""
        if not isinstance(issuer, str) or not kid.startswith(issuer + "#"):
            raise AuthError(f"key id {kid[:200]!r} is not under the token's issuer")
        ring = await self._resolver.keys(issuer, "capabilityInvocation", want=kid)
        now = int(self._clock())
        claims = verify_dcp_token(token, audience=self.did, now=now, leeway_s=self._leeway_s,
                                  keys=ring)
        self._accept(claims, now)
        await self.claim_shared(claims.jti, claims.expires_at)
        verified_token.set((token, claims))
        return claims

    async def verify_async(self, authorization: str | None) -> Claims:
        token = await self.verify_token(authorization)
        hit = self._claims.get(token.issuer)
        if hit is not None:
            return hit[2]
        verified, ttl = await self._present(token)
        self._claims.put(token.issuer, verified, ttl)
        self._last.pop(token.issuer, None)
        self._last[token.issuer] = verified
        while len(self._last) > MAX_CACHED:
            self._last.pop(next(iter(self._last)))
        return verified

    async def _present(self, token: DcpTokenClaims) -> tuple[Claims, float]:
        """Query the caller's Credential Service and verify what it presents."""
        holder = token.issuer
        endpoint = service_endpoint(await self._resolver.document(holder),
                                    CREDENTIAL_SERVICE_TYPE)
        if endpoint is None or not endpoint.startswith("https://"):
            raise AuthError(f"{holder[:200]}: no https CredentialService in its DID document")
        query = json.dumps(dcp.presentation_query(self._scopes)).encode()
        auth = "Bearer " + self._identity.dcp_token(holder, token.access_token)
        body = await self._http.post_json(endpoint.rstrip("/") + "/presentations/query", query,
                                          authorization=auth, max_bytes=MAX_PRESENTATION_BYTES)
        try:
            response = json.loads(within_depth(body))
        except ValueError:
            raise AuthError("presentation response: not JSON") from None
        presentations = dcp.parse_presentation_response(response)
        refs = vc.references(presentations)
        keys: dict[str, PublicKey] = {}
        for did in refs.dids:
            relationship = ("authentication" if did == holder else
                            "assertionMethod" if did in self._trusted else None)
            if relationship is None:
                continue  # an untrusted issuer's document is never fetched
            ring = await self._resolver.keys(did, relationship)
            keys.update({kid: k for kid in refs.key_ids
                         if kid not in keys and (k := ring.public_key(kid)) is not None})
        lists: dict[str, bytes] = {}
        ttl = float(self._status_cache_s)
        for url, issuers in _status_pointers(presentations).items():
            trusted = [i for i in issuers if i in self._trusted]
            if len(trusted) == 1 and len(issuers) == 1:
                bits, left = await self._status_list(url, trusted[0])
                lists[url] = bits
                ttl = min(ttl, left)
        now = int(self._clock())
        verified = vc.verify_presentations(
            presentations, holder=holder, audience=self.did, now=now, leeway_s=self._leeway_s,
            resolve_key=keys.get, trusted_issuers=self._trusted, status_lists=lists.get,
            required_types=self._required)
        for credential in verified.credentials:
            if credential.expires_at is not None:
                ttl = min(ttl, credential.expires_at - now)
        return Claims(participant_id=holder, attributes=verified.policy_attributes()), ttl

    async def _status_list(self, url: str, issuer: str) -> tuple[bytes, float]:
        """The verified bits of a status list and how much longer they may be used."""

        async def fetch() -> tuple[float, bytes]:
            bits, headers = await fetch_status_list(
                self._http, self._resolver, url, issuer=issuer, now=int(self._clock()),
                leeway_s=self._leeway_s)
            age = max_age(headers)
            return float(self._status_cache_s if age is None
                         else min(age, self._status_cache_s)), bits

        key = f"{issuer} {url}"
        bits = await self._status.load(key, fetch)
        hit = self._status.get(key)
        return bits, max(0.0, hit[1] - self._clock()) if hit else 0.0


@dataclass(frozen=True, kw_only=True)
class CredentialService:
    """Our Credential Service (holder side): ``POST /cs/presentations/query``.

    ``own_keys``: the keys our access tokens may be signed with (every key still in our
    did.json); ``credentials``: the VC JWTs of ``credentials/``, read on each query."""

    identity: Identity
    verifier: DcpVerifier
    own_keys: Callable[[], KeyRing]
    credentials: Callable[[], list[str]]
    leeway_s: int
    clock: Callable[[], float]

    async def query(self, authorization: str | None, body: Any) -> dict[str, Any]:
        """The PresentationResponseMessage for a verifier; AuthError / MalformedMessage."""
        token = await self.verifier.verify_token(authorization)
        granted = dcp.verify_access_token(
            token.access_token, holder=self.identity.did, verifier=token.issuer,
            now=int(self.clock()), leeway_s=self.leeway_s, keys=self.own_keys())
        scopes = dcp.parse_presentation_query(body)
        try:
            held = self.credentials()
        except (OSError, ConnectorError) as exc:
            log.error("cannot read credentials/: %s", exc)
            held = []
        chosen = dcp.select_credentials(held, scopes, granted)
        presentations = [self.identity.presentation(token.issuer, chosen)] if chosen else []
        return dcp.presentation_response(presentations)
