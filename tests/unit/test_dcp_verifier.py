"""service.dcp_verifier against an in-memory network: caching, refusals, the Credential Service."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from connector.config import load_settings
from connector.core import credentials as vc
from connector.core import dcp
from connector.core.errors import AuthError, ConfigError, MalformedMessage
from connector.core.identity import (
    KeyRing,
    build_did_document,
    did_web_to_url,
    document_keys,
    issue_dcp_token,
    issue_token,
    parse_jws,
    signing_public_jwk,
    with_credential_service,
)
from connector.service.auth import Identity
from connector.service.dcp_verifier import (
    CredentialService,
    DcpVerifier,
    DidResolver,
    max_age,
)

NOW = 1_800_000_000
ISSUER = "did:web:authority.example"
STATUS_URL = "https://authority.example/status/revocation"


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


class FakeHttp:
    """GETs answered from ``pages``; POSTs to a Credential Service by ``cs``."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.cs: dict[str, Any] = {}
        self.gets: list[str] = []
        self.posts: list[str] = []
        self.bodies: list[Any] = []

    async def get(self, url: str, *, max_bytes: int) -> tuple[bytes, Mapping[str, str]]:
        self.gets.append(url)
        if url not in self.pages:
            raise AuthError(f"GET {url} answered 404")
        return self.pages[url]

    async def post_json(self, url: str, body: bytes, *, authorization: str,
                        max_bytes: int) -> bytes:
        self.posts.append(url)
        self.bodies.append(json.loads(body))
        return json.dumps(await self.cs[url](authorization, json.loads(body))).encode()


class Party:
    def __init__(self, did: str) -> None:
        self.did = did
        self.kid = did + "#key-1"
        self.key = ec.generate_private_key(ec.SECP256R1())

    def document(self, cs: str | None = None) -> dict[str, Any]:
        jwk = signing_public_jwk(self.key)
        doc = build_did_document(self.did, "https://x/dsp", [(self.kid, jwk)])
        return with_credential_service(doc, cs) if cs else doc


def publish(http: FakeHttp, party: Party, cs: str | None = None) -> None:
    http.pages[did_web_to_url(party.did)] = (json.dumps(party.document(cs)).encode(), {})


def status_list(authority: Party, bits: bytes, *,
                max_age_s: int = 60) -> tuple[bytes, dict[str, str]]:
    token = vc.issue_status_list_credential(authority.key, kid=authority.kid, issuer=ISSUER,
                                            url=STATUS_URL, bits=bits, now=NOW - 10,
                                            valid_s=86_400)
    return token.encode(), {"Cache-Control": f"max-age={max_age_s}"}


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.http = FakeHttp()
        self.authority = Party(ISSUER)
        self.holder = Party("did:web:holder.example")
        self.verifier_party = Party("did:web:verifier.example")
        publish(self.http, self.authority)
        publish(self.http, self.holder, "https://holder.example/cs")
        publish(self.http, self.verifier_party, "https://verifier.example/cs")
        self.bits = vc.new_status_list()
        self.http.pages[STATUS_URL] = status_list(self.authority, self.bits)
        self.credential = vc.issue_credential(
            self.authority.key, kid=self.authority.kid, issuer=ISSUER, subject=self.holder.did,
            credential_id="urn:uuid:1", now=NOW - 100, valid_s=86_400,
            attributes={"purpose": "research"}, status=vc.StatusEntry(STATUS_URL, 42))
        # The holder side: a real CredentialService answering queries.
        self.holder_identity = Identity(did=self.holder.did, kid=self.holder.kid,
                                        key=self.holder.key, ttl_s=60, clock=self.clock,
                                        dcp_mode=True)
        holder_verifier = self._verifier(self.holder_identity)
        self.cs = CredentialService(
            identity=self.holder_identity, verifier=holder_verifier,
            own_keys=lambda: KeyRing(document_keys(self.holder.document(), self.holder.did)),
            credentials=lambda: [self.credential], leeway_s=5, clock=self.clock)
        self.http.cs["https://holder.example/cs/presentations/query"] = self.cs.query
        self.identity = Identity(did=self.verifier_party.did, kid=self.verifier_party.kid,
                                 key=self.verifier_party.key, ttl_s=60, clock=self.clock,
                                 dcp_mode=True)
        self.verifier = self._verifier(self.identity)

    def _verifier(self, identity: Identity) -> DcpVerifier:
        resolver = DidResolver(self.http, cache_s=300, clock=self.clock)
        return DcpVerifier(identity=identity, resolver=resolver, http=self.http,
                           trusted_issuers={ISSUER: ["MembershipCredential"]},
                           required_types=["MembershipCredential"], leeway_s=5,
                           status_cache_s=30, clock=self.clock)

    def authorization(self) -> str:
        return self.holder_identity.authorization(self.verifier_party.did)


async def test_a_member_is_verified_by_presentation_and_cached() -> None:
    w = World()
    claims = await w.verifier.verify_async(w.authorization())
    assert claims.participant_id == w.holder.did
    assert claims.attributes["membership"] == "active"
    assert claims.attributes["purpose"] == "research"
    claims = await w.verifier.verify_async(w.authorization())
    assert len(w.http.posts) == 1  # the second request reused the verified claims
    assert w.http.gets.count(STATUS_URL) == 1
    assert w.verifier.last_claims(w.holder.did) == claims


async def test_revocation_is_seen_once_the_caches_expire() -> None:
    w = World()
    await w.verifier.verify_async(w.authorization())
    w.http.pages[STATUS_URL] = status_list(w.authority, vc.set_status(w.bits, 42))
    await w.verifier.verify_async(w.authorization())  # still cached
    w.clock.now += 31
    with pytest.raises(AuthError, match="revoked"):
        await w.verifier.verify_async(w.authorization())


async def test_status_list_max_age_shortens_the_cache() -> None:
    w = World()
    w.http.pages[STATUS_URL] = status_list(w.authority, w.bits, max_age_s=5)
    await w.verifier.verify_async(w.authorization())
    w.http.pages[STATUS_URL] = status_list(w.authority, vc.set_status(w.bits, 42))
    w.clock.now += 6
    with pytest.raises(AuthError, match="revoked"):
        await w.verifier.verify_async(w.authorization())


async def test_replay_and_missing_bearer_are_refused() -> None:
    w = World()
    authorization = w.authorization()
    await w.verifier.verify_async(authorization)
    with pytest.raises(AuthError, match="replayed"):
        await w.verifier.verify_async(authorization)
    with pytest.raises(AuthError, match="Bearer"):
        await w.verifier.verify_async(w.authorization().removeprefix("Bearer "))
    with pytest.raises(AuthError, match="missing"):
        await w.verifier.verify_async(None)
    with pytest.raises(AuthError, match="asynchronously"):
        w.verifier.verify(w.authorization())


async def test_a_token_without_access_token_is_refused() -> None:
    w = World()
    token = issue_token(w.holder.key, kid=w.holder.kid, issuer=w.holder.did,
                        audience=w.verifier_party.did, now=NOW, jti="j", ttl_s=60)
    with pytest.raises(AuthError, match="token"):
        await w.verifier.verify_async("Bearer " + token)


async def test_a_rotated_key_is_fetched_again() -> None:
    w = World()
    await w.verifier.verify_async(w.authorization())
    new = ec.generate_private_key(ec.SECP256R1())
    doc = build_did_document(w.holder.did, "https://x/dsp",
                             [(w.holder.kid, signing_public_jwk(w.holder.key)),
                              (w.holder.did + "#key-2", signing_public_jwk(new))])
    doc = with_credential_service(doc, "https://holder.example/cs")
    w.http.pages[did_web_to_url(w.holder.did)] = (json.dumps(doc).encode(), {})
    w.clock.now += 3
    token = issue_dcp_token(new, kid=w.holder.did + "#key-2", issuer=w.holder.did,
                            audience=w.verifier_party.did, now=int(w.clock.now), jti="r",
                            ttl_s=60, access_token="a")
    claims = await w.verifier.verify_async("Bearer " + token)
    assert claims.participant_id == w.holder.did


async def test_an_unknown_did_host_is_an_auth_error() -> None:
    w = World()
    stranger = Party("did:web:stranger.example")
    token = issue_dcp_token(stranger.key, kid=stranger.kid, issuer=stranger.did,
                            audience=w.verifier_party.did, now=NOW, jti="s", ttl_s=60,
                            access_token="a")
    with pytest.raises(AuthError, match="404"):
        await w.verifier.verify_async("Bearer " + token)


async def test_untrusted_issuers_are_not_fetched() -> None:
    w = World()
    rogue = Party("did:web:rogue.example")
    publish(w.http, rogue)
    w.credential = vc.issue_credential(rogue.key, kid=rogue.kid, issuer=rogue.did,
                                       subject=w.holder.did, credential_id="urn:uuid:2",
                                       now=NOW, valid_s=3600)
    with pytest.raises(AuthError, match="untrusted issuer"):
        await w.verifier.verify_async(w.authorization())
    assert did_web_to_url(rogue.did) not in w.http.gets


async def test_credential_service_grants_only_what_the_access_token_allows() -> None:
    w = World()
    access = dcp.issue_access_token(w.holder.key, kid=w.holder.kid, holder=w.holder.did,
                                    verifier=w.verifier_party.did, scopes=["x.vc.type:Other"],
                                    now=NOW, jti=str(uuid.uuid4()), ttl_s=60)
    auth = "Bearer " + w.identity.dcp_token(w.holder.did, access)
    query = dcp.presentation_query(dcp.type_scopes(["MembershipCredential"]))
    answer = await w.cs.query(auth, query)
    assert answer["presentation"] == []
    # An access token bound to another verifier is refused.
    other = dcp.issue_access_token(w.holder.key, kid=w.holder.kid, holder=w.holder.did,
                                   verifier="did:web:other.example", scopes=[dcp.MEMBERSHIP_SCOPE],
                                   now=NOW, jti=str(uuid.uuid4()), ttl_s=60)
    with pytest.raises(AuthError, match="another verifier"):
        await w.cs.query("Bearer " + w.identity.dcp_token(w.holder.did, other),
                         dcp.presentation_query([dcp.MEMBERSHIP_SCOPE]))
    good = dcp.issue_access_token(w.holder.key, kid=w.holder.kid, holder=w.holder.did,
                                  verifier=w.verifier_party.did, scopes=[dcp.MEMBERSHIP_SCOPE],
                                  now=NOW, jti=str(uuid.uuid4()), ttl_s=60)
    with pytest.raises(MalformedMessage):
        await w.cs.query("Bearer " + w.identity.dcp_token(w.holder.did, good), {"type": "x"})


def test_max_age_and_scopes() -> None:
    assert max_age({"Cache-Control": "public, max-age=60"}) == 60
    assert max_age({}) is None
    assert dcp.type_scopes(["MembershipCredential"]) == [
        "org.eclipse.dspace.dcp.vc.type:MembershipCredential:read"]
    assert dcp.type_scopes(["A", "B"], dcp.EDC_SCOPE_ALIAS) == [
        "org.eclipse.edc.vc.type:A:read", "org.eclipse.edc.vc.type:B:read"]


@pytest.mark.parametrize("alias", [None, dcp.EDC_SCOPE_ALIAS])
async def test_verifier_queries_with_the_configured_scope_alias(alias: str | None) -> None:
    w = World()
    if alias is not None:
        resolver = DidResolver(w.http, cache_s=300, clock=w.clock)
        w.verifier = DcpVerifier(identity=w.identity, resolver=resolver, http=w.http,
                                 trusted_issuers={ISSUER: ["MembershipCredential"]},
                                 required_types=["MembershipCredential"], leeway_s=5,
                                 status_cache_s=30, clock=w.clock, scope_alias=alias)
    claims = await w.verifier.verify_async(w.authorization())
    assert claims.participant_id == w.holder.did
    expected = alias or "org.eclipse.dspace.dcp.vc.type"
    assert w.http.bodies[-1]["scope"] == [f"{expected}:MembershipCredential:read"]


def test_identity_grants_the_configured_scopes() -> None:
    party = Party("did:web:consumer.example")
    grants = dcp.type_scopes(["MembershipCredential", "LabCredential"])
    identity = Identity(did=party.did, kid=party.kid, key=party.key, ttl_s=60,
                        clock=lambda: float(NOW), dcp_mode=True, grants=grants)
    outer = parse_jws(identity.token_for("did:web:provider.example")).payload
    access = parse_jws(outer["token"]).payload
    assert access["scope"].split(" ") == grants
    assert access["sub"] == "did:web:provider.example"


def test_identity_settings(tmp_path: Any) -> None:
    from connector.participant.init import init_folder

    init_folder(tmp_path / "p", name="p", url="https://127.0.0.1:8443")
    config = tmp_path / "p" / "connector.toml"
    assert load_settings(tmp_path / "p").identity_mode == "pinned"
    text = config.read_text()
    config.write_text(text + '\n[identity]\nmode = "dcp"\nstatus_cache_s = 5\n'
                      'tls_ca_files = ["ca.pem"]\n[identity.trusted_issuers]\n'
                      '"did:web:a" = ["MembershipCredential"]\n')
    s = load_settings(tmp_path / "p")
    assert s.identity_mode == "dcp" and s.status_cache_s == 5 and s.did_cache_s == 300
    assert s.trusted_issuers == {"did:web:a": ("MembershipCredential",)}
    assert s.tls_ca_files == (s.root / "ca.pem",)
    assert "identity" not in s.extra
    assert s.scope_alias == "org.eclipse.dspace.dcp.vc.type"
    config.write_text(text + '\n[identity]\nscope_alias = "org.eclipse.edc.vc.type"\n')
    assert load_settings(tmp_path / "p").scope_alias == "org.eclipse.edc.vc.type"
    for bad in (0, 3601, '"300"'):
        config.write_text(text.replace("[signing]\n", f"[signing]\ntoken_ttl_s = {bad}\n"))
        with pytest.raises(ConfigError, match="token_ttl_s"):
            load_settings(tmp_path / "p")
    config.write_text(text.replace("[signing]\n", "[signing]\ntoken_ttl_s = 3600\n"))
    assert load_settings(tmp_path / "p").token_ttl_s == 3600
    for bad in ("-1", "true", "2.5"):
        config.write_text(text + f'\n[identity]\nstatus_cache_s = 0\ndid_cache_s = {bad}\n')
        with pytest.raises(ConfigError, match="'did_cache_s' must be an integer of at least 0"):
            load_settings(tmp_path / "p")
    config.write_text(text + '\n[identity]\nstatus_cache_s = 0\ndid_cache_s = 0\n')
    assert load_settings(tmp_path / "p").did_cache_s == 0
    config.write_text(text + '\n[identity]\nscope_alias = "a:b"\n')
    with pytest.raises(ConfigError, match="scope_alias"):
        load_settings(tmp_path / "p")
    config.write_text(text + '\n[identity]\nmode = "oauth"\n')
    with pytest.raises(ConfigError, match="mode"):
        load_settings(tmp_path / "p")


async def test_reload_identity_drops_claims_of_an_issuer_no_longer_trusted() -> None:
    w = World()
    await w.verifier.verify_async(w.authorization())
    assert w.verifier.last_claims(w.holder.did) is not None
    posts = len(w.http.posts)
    # Trust an issuer the holder's credential is not from: the cached claims go too.
    w.verifier.reload_identity(trusted_issuers={"did:web:other.example": ["MembershipCredential"]},
                               required_types=["MembershipCredential"],
                               scope_alias=dcp.EDC_SCOPE_ALIAS, status_cache_s=30)
    assert w.verifier.last_claims(w.holder.did) is None
    with pytest.raises(AuthError, match="issuer"):
        await w.verifier.verify_async(w.authorization())
    assert len(w.http.posts) == posts + 1  # asked again, not answered from the cache
    assert w.http.bodies[-1]["scope"] == ["org.eclipse.edc.vc.type:MembershipCredential:read"]
    w.verifier.reload_identity(trusted_issuers={ISSUER: ["MembershipCredential"]},
                               required_types=["MembershipCredential"],
                               scope_alias=dcp.SPEC_SCOPE_ALIAS, status_cache_s=30)
    assert (await w.verifier.verify_async(w.authorization())).participant_id == w.holder.did
    kept = w.verifier.last_claims(w.holder.did)
    w.verifier.reload_identity(trusted_issuers={ISSUER: ["MembershipCredential"],
                                                "did:web:new.example": ["LabCredential"]},
                               required_types=["MembershipCredential"],
                               scope_alias=dcp.SPEC_SCOPE_ALIAS, status_cache_s=30)
    assert w.verifier.last_claims(w.holder.did) == kept  # its issuer is still trusted
