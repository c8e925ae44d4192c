"""Who we are on the wire, and who is calling: self-issued tokens plus a replay store.

Outgoing: every DSP request carries ``Authorization: Bearer <self-issued ID token>`` with
``aud`` = the receiver's DID (DCP 1.0 §Self-Issued ID Tokens). Incoming: the token is verified
against the peers pinned in ``trust/`` before the body is read; a ``jti`` seen before its
expiry is refused as a replay. Seen jtis are checked in memory and written behind to the
store (``SeenTokens``), which gives them back on start-up: a replay is refused across a
restart too. An unexpired jti is never forgotten: past MAX_REMEMBERED_JTIS live ones, new
tokens are refused until some expire.

In DCP mode (``[identity] mode = "dcp"``) the outgoing token also carries, in its ``token``
claim, an access token that lets the receiver read our membership credential from our
Credential Service; incoming tokens are verified by ``service.dcp_verifier.DcpVerifier``
through ``verify_async`` (the DSP routes always call that one).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from connector.core import dcp
from connector.core.credentials import issue_presentation
from connector.core.errors import AuthError
from connector.core.identity import (
    BODY_DIGEST_CLAIM,
    MAX_TOKEN_LIFETIME_S,
    KeyRing,
    SigningKey,
    TokenClaims,
    build_did_document,
    issue_dcp_token,
    issue_token,
    parse_jws,
    verify_token,
)
from connector.service.catalog import Claims
from connector.service.store import SeenTokens, SharedSeenTokens

# A bound on remembered live token ids (~160 MB): at 3k requests/s and 5-minute tokens this is
# reached only under abuse. Past it a new token is refused (fail closed), never is an unexpired
# jti evicted: that would let the evicted token be replayed.
MAX_REMEMBERED_JTIS = 1_000_000
# At the bound, the whole table is swept for expired jtis at most this often (a sweep of a
# million entries takes tens of ms; the front is purged on every call).
SWEEP_INTERVAL_S = 1

# The token this request's task verified last, with its claims (each aiohttp request runs in a
# task of its own): ``bind_body`` reads the body digest claim from here instead of decoding
# the token again.
verified_token: ContextVar[tuple[str, TokenClaims] | None] = ContextVar(
    "verified_token", default=None)


class Identity:
    """Signs our outgoing requests (and, in DCP mode, our access tokens and presentations)."""

    def __init__(self, *, did: str, kid: str, key: SigningKey, ttl_s: int,
                 clock: Callable[[], float], dcp_mode: bool = False,
                 grants: Sequence[str] = (dcp.MEMBERSHIP_SCOPE,)) -> None:
        self.did = did
        self._kid = kid
        self._key = key
        self._ttl_s = ttl_s
        self._clock = clock
        self.dcp_mode = dcp_mode
        self._grants = list(grants)

    def __repr__(self) -> str:  # never show the key
        return f"Identity(did={self.did!r}, kid={self._kid!r})"

    @property
    def kid(self) -> str:
        return self._kid

    def reload(self, *, kid: str, key: SigningKey) -> None:
        """Sign with another key from now on (``connector keys rotate`` switched [signing])."""
        self._kid, self._key = kid, key

    def grant(self, scopes: Sequence[str]) -> None:
        """Grant these scopes in the access tokens we hand verifiers from now on (DCP mode)."""
        self._grants = list(scopes)

    def token_for(self, audience: str, body: bytes | None = None) -> str:
        """Our self-issued token for ``audience``; bound to ``body`` when given (its digest)."""
        now, jti = int(self._clock()), str(uuid.uuid4())
        digest = None if body is None else hashlib.sha256(body).hexdigest()
        if not self.dcp_mode:
            return issue_token(self._key, kid=self._kid, issuer=self.did, audience=audience,
                               now=now, jti=jti, ttl_s=self._ttl_s, body_digest=digest)
        # DCP 1.0 "Verifiable Presentation Access Token": the receiver may read the credential types
        # the space requires ([identity] required_credentials), nothing else.
        access = dcp.issue_access_token(
            self._key, kid=self._kid, holder=self.did, verifier=audience,
            scopes=self._grants, now=now, jti=str(uuid.uuid4()), ttl_s=self._ttl_s)
        return self.dcp_token(audience, access, now=now, jti=jti, body_digest=digest)

    def dcp_token(self, audience: str, access_token: str, *, now: int | None = None,
                  jti: str | None = None, body_digest: str | None = None) -> str:
        """A DCP self-issued token forwarding ``access_token`` (a query to a holder's CS)."""
        return issue_dcp_token(
            self._key, kid=self._kid, issuer=self.did, audience=audience,
            now=int(self._clock()) if now is None else now, jti=jti or str(uuid.uuid4()),
            ttl_s=self._ttl_s, access_token=access_token, body_digest=body_digest)

    def presentation(self, audience: str, credentials: list[str], ttl_s: int = 60) -> str:
        """A VP JWT showing ``credentials`` to ``audience``, signed with our current key."""
        return issue_presentation(self._key, kid=self._kid, holder=self.did, audience=audience,
                                  credentials=credentials, now=int(self._clock()),
                                  jti=str(uuid.uuid4()), ttl_s=ttl_s)

    def authorization(self, audience: str, body: bytes | None = None) -> str:
        return "Bearer " + self.token_for(audience, body)


class Verifier:
    """Verifies incoming tokens against pinned peers; remembers jtis until they expire."""

    def __init__(self, *, did: str, peers: Mapping[str, Any], leeway_s: int,
                 clock: Callable[[], float]) -> None:
        self.did = did
        self._leeway_s = leeway_s
        self._clock = clock
        self._seen: dict[str, int] = {}  # jti -> until (exp + leeway), insertion-ordered
        self._swept_at = -SWEEP_INTERVAL_S
        self._record: Callable[[str, int], None] | None = None  # write-behind to the store
        # A database shared by replicas: each jti claimed there before the request goes on.
        self._claim: Callable[[str, int, int], Awaitable[bool]] | None = None
        self.reload(peers)

    async def restore(self, store: SeenTokens) -> int:
        """Remember the unexpired jtis ``store`` holds and record new ones there from now on.

        Called on start-up before serving; returns how many live jtis were loaded.
        """
        now = int(self._clock())
        for jti, until in self._seen.items():  # seen before the store was attached
            store.record_jti(jti, until)
        loaded = await store.live_jtis(now)
        for jti, until in loaded:  # soonest expiry first, as _purge expects
            if self._seen.get(jti, -1) < until:
                self._seen[jti] = until
        if isinstance(store, SharedSeenTokens):
            self._claim = store.claim_jti  # claimed in the request, not written behind
        else:
            self._record = store.record_jti
        return len(loaded)

    async def claim_shared(self, jti: str, expires_at: int) -> None:
        """With a shared database: AuthError if another replica accepted ``jti`` already."""
        if self._claim is not None and not await self._claim(
                jti, expires_at + self._leeway_s, int(self._clock())):
            raise AuthError("token replayed (jti already used)")

    def reload(self, peers: Mapping[str, Any]) -> None:
        """Take a new set of pinned peers (``participant.trust.load_trust`` values)."""
        self._peers = dict(peers)
        self._documents: dict[str, dict[str, Any]] = {}  # built from _peers when asked
        self._keys = KeyRing({kid: jwk for p in self._peers.values()
                              for kid, jwk in p.keys.items()})

    def peer_document(self, did: str) -> dict[str, Any] | None:
        """The caller's keys as a DID document (kept as evidence with its signed messages)."""
        document = self._documents.get(did)
        peer = self._peers.get(did)
        if document is None and peer is not None:
            document = build_did_document(did, peer.dsp_base or peer.url,
                                          list(peer.keys.items()))
            self._documents[did] = document
        return document

    def requires_binding(self, did: str) -> bool:
        """Whether ``did``'s tokens must carry the body digest claim: our pinned peers' must
        (they are connectors like this one); DCP mode overrides this (EDC sends none)."""
        return did in self._peers

    async def verify_async(self, authorization: str | None) -> Claims:
        """What the DSP routes call: ``verify`` here, and the jti claimed in a shared database;
        DCP mode overrides it with network IO."""
        if self._claim is None:
            return self.verify(authorization)
        verified, claims = self._verified(authorization)
        await self.claim_shared(claims.jti, claims.expires_at)
        return verified

    def verify(self, authorization: str | None) -> Claims:
        """The caller's verified claims, or AuthError (the reason is logged, never the token)."""
        return self._verified(authorization)[0]

    def _verified(self, authorization: str | None) -> tuple[Claims, TokenClaims]:
        if not authorization:
            raise AuthError("missing Authorization header")
        token = authorization[7:] if authorization[:7].lower() == "bearer " else authorization
        now = int(self._clock())
        try:
            claims = verify_token(token.strip(), audience=self.did, now=now,
                                  leeway_s=self._leeway_s, keys=self._keys)
        except AuthError as exc:
            raise AuthError(self._explained(token.strip(), exc.message)) from None
        self._accept(claims, now)
        verified_token.set((token.strip(), claims))
        peer = self._peers[claims.issuer]
        return Claims(participant_id=claims.issuer, attributes=dict(peer.attributes)), claims

    def _explained(self, token: str, reason: str) -> str:
        """``reason``, and for a key we do not know, why and what the caller can do about it:
        its DID is not pinned here, it is pinned with other keys (it rotated), or it speaks
        DCP (its token carries an access token) while we only trust pinned peers."""
        if not reason.startswith("unknown key id"):
            return reason
        try:
            payload = parse_jws(token).payload
        except AuthError:
            return reason
        issuer = str(payload.get("iss"))[:200]
        peer = self._peers.get(issuer)
        if payload.get("token") is not None and peer is None:
            return (f"{reason}: identity modes differ: {issuer} presents DCP credentials, but "
                    f"{self.did} only trusts peers pinned in its trust/ folder; both sides "
                    "need the same [identity] mode")
        if peer is None:
            return (f"{reason}: not pinned by this provider: {self.did} has no trust file for "
                    f"{issuer}; ask its operator to pin you (`connector trust add` with your "
                    "did.json and TLS certificate)")
        known = ", ".join(sorted(kid.rsplit("#", 1)[-1] for kid in peer.keys))
        return (f"{reason}: pinned with an older key: {self.did} knows {issuer} by {known} "
                "only; ask them to re-pin you (`connector trust add` with your new did.json)")

    def _accept(self, claims: TokenClaims, now: int) -> None:
        """Refuse a token living longer than MAX_TOKEN_LIFETIME_S, else remember its jti.

        Replay protection holds a jti until the token expires; a token valid for years would
        hold its slot (and, in numbers, fill the bound) for years.
        """
        lifetime = claims.expires_at - claims.issued_at
        if lifetime > MAX_TOKEN_LIFETIME_S:
            raise AuthError(f"token lifetime {lifetime} s exceeds {MAX_TOKEN_LIFETIME_S} s")
        self._remember(claims.jti, claims.expires_at + self._leeway_s, now)

    def _remember(self, jti: str, until: int, now: int) -> None:
        """Accept ``jti`` once until ``until``; AuthError for a replay or past the bound."""
        seen = self._seen
        prior = seen.get(jti)
        if prior is not None:
            if prior >= now:
                raise AuthError("token replayed (jti already used)")
            del seen[jti]  # expired: re-added at the end, in expiry order
        self._purge(now)
        if len(seen) >= MAX_REMEMBERED_JTIS:
            if now - self._swept_at >= SWEEP_INTERVAL_S:
                self._swept_at = now
                for old in [k for k, v in seen.items() if v < now]:
                    del seen[old]
            if len(seen) >= MAX_REMEMBERED_JTIS:
                raise AuthError("too many live tokens; try again")
        seen[jti] = until
        if self._record is not None:
            self._record(jti, until)

    def _purge(self, now: int) -> None:
        # Insertion order approximates expiry order: drop expired entries from the front (a
        # longer-lived token holds back those behind it until the sweep at the bound).
        seen = self._seen
        while seen:
            jti, until = next(iter(seen.items()))
            if until >= now:
                return
            del seen[jti]


@dataclass(frozen=True, slots=True)
class Binding:
    """How a verified request's token relates to its body (``bind_body``)."""

    token: str | None  # the compact JWS, kept as evidence; None when it is not one
    token_id: str | None
    bound: bool
    body_digest: str | None = None  # the body's SHA-256 (hex) when the check computed it


def bind_body(authorization: str | None, body: bytes, *, required: bool) -> Binding:
    """Check the body digest claim of an already verified token against ``body``.

    A claim that does not match is refused like a forged token (AuthError); a token without
    the claim is refused when ``required`` (our pinned peers), else accepted as unbound
    evidence (EDC's tokens, a test profile's static token).
    """
    raw = authorization or ""
    token = raw[7:].strip() if raw[:7].lower() == "bearer " else raw.strip()
    verified = verified_token.get()
    if verified is not None and verified[0] == token and verified[1].body_digest is not None:
        # This request's token, verified a moment ago: its claims are at hand.
        return _bound(token, verified[1].jti, verified[1].body_digest, body)
    try:
        payload = parse_jws(token).payload
    except AuthError:
        if required:
            raise
        return Binding(None, None, False)
    jti = payload.get("jti")
    claimed = payload.get(BODY_DIGEST_CLAIM)
    token_id = jti if isinstance(jti, str) else None
    if claimed is None:
        if required:
            raise AuthError(f"token carries no {BODY_DIGEST_CLAIM} claim")
        return Binding(token, token_id, False)
    if not isinstance(claimed, str):
        raise AuthError("the token was signed for another message body")
    return _bound(token, token_id, claimed, body)


def _bound(token: str, token_id: str | None, claimed: str, body: bytes) -> Binding:
    digest = hashlib.sha256(body).hexdigest()
    if not hmac.compare_digest(claimed, digest):
        raise AuthError("the token was signed for another message body")
    return Binding(token, token_id, True, digest)
