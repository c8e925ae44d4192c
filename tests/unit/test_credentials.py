"""core.credentials and the DCP additions of core.identity: VC/VP round trip and every refusal."""

from __future__ import annotations

import base64
import gzip
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from connector.core import credentials as vc
from connector.core.errors import AuthError, ConfigError
from connector.core.identity import (
    KeyRing,
    build_did_document,
    did_web_from_url,
    did_web_to_url,
    document_keys,
    issue_dcp_token,
    issue_token,
    service_endpoint,
    signing_public_jwk,
    verify_dcp_token,
    verify_token,
    with_credential_service,
)

AUTHORITY = "did:web:authority.example.org%3A7443"
AUTHORITY_KID = f"{AUTHORITY}#key-1"
HOLDER = "did:web:alpha.example.org%3A8443"
HOLDER_KID = f"{HOLDER}#key-1"
VERIFIER = "did:web:beta.example.org%3A9443"
LIST_URL = "https://authority.example.org:7443/status/revocation"
NOW = 1_750_000_000
DAY = 86_400
LEEWAY = 5


@pytest.fixture(scope="module")
def authority_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def holder_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def ring(authority_key: ec.EllipticCurvePrivateKey, holder_key: Ed25519PrivateKey) -> KeyRing:
    return KeyRing({AUTHORITY_KID: signing_public_jwk(authority_key),
                    HOLDER_KID: signing_public_jwk(holder_key)})


def _vc(key: Any, **overrides: Any) -> str:
    args: dict[str, Any] = {
        "kid": AUTHORITY_KID, "issuer": AUTHORITY, "subject": HOLDER,
        "credential_id": "urn:uuid:c-1", "now": NOW, "valid_s": 30 * DAY,
        "attributes": {"country": "DE"}, "status": vc.StatusEntry(LIST_URL, 42)}
    args.update(overrides)
    return vc.issue_credential(key, **args)


def _vp(key: Any, credentials: list[str], **overrides: Any) -> str:
    args: dict[str, Any] = {"kid": HOLDER_KID, "holder": HOLDER, "audience": VERIFIER,
                            "now": NOW, "jti": "vp-1", "ttl_s": 300}
    args.update(overrides)
    return vc.issue_presentation(key, credentials=credentials, **args)


def _verify(presentation: str, ring: KeyRing, **overrides: Any) -> vc.VerifiedClaims:
    clean = vc.new_status_list()
    args: dict[str, Any] = {
        "holder": HOLDER, "audience": VERIFIER, "now": NOW + 60, "leeway_s": LEEWAY,
        "resolve_key": ring.public_key,
        "trusted_issuers": {AUTHORITY: ["MembershipCredential"]},
        "status_lists": {LIST_URL: clean}.get, "required_types": ["MembershipCredential"]}
    args.update(overrides)
    return vc.verify_presentation(presentation, **args)


# --- round trip ---------------------------------------------------------------------------------


def test_round_trip_gives_the_policy_claims(authority_key: Any, holder_key: Any,
                                            ring: KeyRing) -> None:
    claims = _verify(_vp(holder_key, [_vc(authority_key)]), ring)
    assert claims.participant_id == HOLDER
    assert claims.membership == "active"
    assert claims.credential_types == ("MembershipCredential",)
    assert claims.issuers == (AUTHORITY,)
    assert claims.attributes == {"country": "DE"}
    assert claims.credentials[0].id == "urn:uuid:c-1"
    assert claims.policy_attributes() == {
        "country": "DE", "membership": "active", "credential_types": ["MembershipCredential"],
        "issuers": [AUTHORITY]}


def test_credential_layout_follows_vc_1_1_jwt(authority_key: Any) -> None:
    payload = jwt.decode(_vc(authority_key), options={"verify_signature": False})
    header = jwt.get_unverified_header(_vc(authority_key))
    assert header["alg"] == "ES256" and header["kid"] == AUTHORITY_KID
    assert payload["iss"] == AUTHORITY and payload["sub"] == HOLDER
    assert payload["jti"] == "urn:uuid:c-1" and payload["exp"] == NOW + 30 * DAY
    body = payload["vc"]
    assert body["type"] == ["VerifiableCredential", "MembershipCredential"]
    assert body["credentialSubject"] == {"id": HOLDER, "country": "DE"}
    assert body["issuanceDate"] == "2025-06-15T15:06:40Z"
    assert body["credentialStatus"] == {
        "id": f"{LIST_URL}#42", "type": "BitstringStatusListEntry",
        "statusPurpose": "revocation", "statusListIndex": "42",
        "statusListCredential": LIST_URL}


def test_extra_credentials_and_several_presentations(authority_key: Any, holder_key: Any,
                                                     ring: KeyRing) -> None:
    other = _vc(authority_key, credential_id="urn:uuid:c-2", types=["DataProcessorCredential"],
                attributes={"country": "FR", "level": 2}, status=None)
    claims = vc.verify_presentations(
        [_vp(holder_key, [_vc(authority_key)]), _vp(holder_key, [other], jti="vp-2")],
        holder=HOLDER, audience=VERIFIER, now=NOW, leeway_s=LEEWAY, resolve_key=ring.public_key,
        trusted_issuers={AUTHORITY: ["*"]}, status_lists={LIST_URL: vc.new_status_list()}.get,
        required_types=["DataProcessorCredential"])
    assert claims.credential_types == ("MembershipCredential", "DataProcessorCredential")
    assert claims.attributes == {"country": "DE", "level": 2}  # first wins


def test_references_name_what_to_fetch(authority_key: Any, holder_key: Any) -> None:
    refs = vc.references([_vp(holder_key, [_vc(authority_key), _vc(authority_key)])])
    assert refs.key_ids == (HOLDER_KID, AUTHORITY_KID)
    assert refs.dids == (HOLDER, AUTHORITY)
    assert refs.status_lists == (LIST_URL,)


# --- every refusal ------------------------------------------------------------------------------


def _refused(presentation: str, ring: KeyRing, match: str, **overrides: Any) -> None:
    with pytest.raises(AuthError, match=match):
        _verify(presentation, ring, **overrides)


def test_forged_presentation_signature(authority_key: Any, ring: KeyRing) -> None:
    forged = _vp(Ed25519PrivateKey.generate(), [_vc(authority_key)])
    _refused(forged, ring, "presentation: signature invalid")


def test_forged_credential_signature(holder_key: Any, ring: KeyRing) -> None:
    forged = _vc(ec.generate_private_key(ec.SECP256R1()))
    _refused(_vp(holder_key, [forged]), ring, "credential: signature invalid")


def test_tampered_credential_payload(authority_key: Any, holder_key: Any, ring: KeyRing) -> None:
    head, _, sig = _vc(authority_key).split(".")
    other = _vc(authority_key, attributes={"country": "XX"}).split(".")[1]
    _refused(_vp(holder_key, [f"{head}.{other}.{sig}"]), ring, "credential: signature invalid")


def test_unknown_kid(authority_key: Any, holder_key: Any, ring: KeyRing) -> None:
    stray = _vc(authority_key, kid=f"{AUTHORITY}#key-9")
    _refused(_vp(holder_key, [stray]), ring, "credential: unknown key id")
    _refused(_vp(holder_key, [_vc(authority_key)], kid=f"{HOLDER}#key-7"), ring,
             "presentation: unknown key id")


def test_kid_of_another_did(authority_key: Any, holder_key: Any, ring: KeyRing) -> None:
    _refused(_vp(holder_key, [_vc(authority_key, kid=HOLDER_KID)]), ring, "is not under")


def test_wrong_presentation_audience(authority_key: Any, holder_key: Any, ring: KeyRing) -> None:
    _refused(_vp(holder_key, [_vc(authority_key)], audience="did:web:other"), ring,
             "presentation wrong audience")


def test_presentation_expired_and_not_yet_valid(authority_key: Any, holder_key: Any,
                                                ring: KeyRing) -> None:
    presentation = _vp(holder_key, [_vc(authority_key)])
    _refused(presentation, ring, "presentation expired", now=NOW + 300 + LEEWAY + 1)
    _verify(presentation, ring, now=NOW + 300 + LEEWAY)  # leeway honoured
    _refused(presentation, ring, "presentation not yet valid", now=NOW - LEEWAY - 1)


def test_credential_expired_and_not_yet_valid(authority_key: Any, holder_key: Any,
                                              ring: KeyRing) -> None:
    old = _vc(authority_key, now=NOW - 40 * DAY)
    _refused(_vp(holder_key, [old]), ring, "credential expired")
    future = _vc(authority_key, now=NOW + DAY)
    _refused(_vp(holder_key, [future]), ring, "credential not yet valid")


def test_holder_does_not_match_token_issuer(authority_key: Any, holder_key: Any,
                                            ring: KeyRing) -> None:
    _refused(_vp(holder_key, [_vc(authority_key)]), ring,
             "holder does not match the token issuer", holder="did:web:mallory.example")


def test_credential_of_someone_else(authority_key: Any, holder_key: Any, ring: KeyRing) -> None:
    stolen = _vc(authority_key, subject="did:web:gamma.example.org")
    _refused(_vp(holder_key, [stolen]), ring, "credential subject does not match the holder")


def test_untrusted_issuer(holder_key: Any) -> None:
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = "did:web:rogue.example"
    ring = KeyRing({f"{rogue}#key-1": signing_public_jwk(rogue_key),
                    HOLDER_KID: signing_public_jwk(holder_key)})
    forged = _vc(rogue_key, issuer=rogue, kid=f"{rogue}#key-1")
    _refused(_vp(holder_key, [forged]), ring, "untrusted issuer 'did:web:rogue.example'")


def test_issuer_trusted_for_another_type_only(authority_key: Any, holder_key: Any,
                                              ring: KeyRing) -> None:
    _refused(_vp(holder_key, [_vc(authority_key)]), ring, "untrusted issuer",
             trusted_issuers={AUTHORITY: ["DataProcessorCredential"]})


def test_missing_required_type(authority_key: Any, holder_key: Any, ring: KeyRing) -> None:
    _refused(_vp(holder_key, [_vc(authority_key)]), ring,
             "missing required credential type 'DataProcessorCredential'",
             required_types=["DataProcessorCredential"])


def test_revoked_and_suspended(authority_key: Any, holder_key: Any, ring: KeyRing) -> None:
    revoked = vc.set_status(vc.new_status_list(), 42)
    presentation = _vp(holder_key, [_vc(authority_key)])
    _refused(presentation, ring, "credential revoked: urn:uuid:c-1",
             status_lists={LIST_URL: revoked}.get)
    neighbour = vc.set_status(vc.new_status_list(), 41)
    _verify(presentation, ring, status_lists={LIST_URL: neighbour}.get)
    suspended = _vc(authority_key, status=vc.StatusEntry(LIST_URL, 42, purpose="suspension",
                                                         type="StatusList2021Entry"))
    _refused(_vp(holder_key, [suspended]), ring, "credential suspended",
             status_lists={LIST_URL: revoked}.get)


def test_status_list_unavailable_fails_closed(authority_key: Any, holder_key: Any,
                                              ring: KeyRing) -> None:
    _refused(_vp(holder_key, [_vc(authority_key)]), ring, "credential status unknown",
             status_lists=lambda url: None)


def test_malformed_presentations(authority_key: Any, holder_key: Any, ring: KeyRing) -> None:
    _refused("not-a-jwt", ring, "malformed token")
    _refused(_vp(holder_key, []), ring, "presentation holds no credentials")
    ldp = jwt.encode({"iss": HOLDER, "aud": VERIFIER, "exp": NOW + 60,
                      "vp": {"verifiableCredential": [{"proof": {}}]}}, holder_key,
                     algorithm="EdDSA", headers={"kid": HOLDER_KID})
    _refused(ldp, ring, "non-JWT credential")
    no_exp = jwt.encode({"iss": HOLDER, "aud": VERIFIER, "vp": {}}, holder_key,
                        algorithm="EdDSA", headers={"kid": HOLDER_KID})
    _refused(no_exp, ring, "presentation has no exp")
    with pytest.raises(AuthError, match="no presentation"):
        vc.verify_presentations([], holder=HOLDER, audience=VERIFIER, now=NOW, leeway_s=0,
                                resolve_key=ring.public_key, trusted_issuers={},
                                status_lists=lambda u: None)


def test_error_messages_are_distinct() -> None:
    # The edge logs these reasons; one reason per check keeps the log useful.
    messages = ["presentation: signature invalid", "credential: signature invalid",
                "credential revoked", "untrusted issuer", "holder does not match the token issuer",
                "credential expired", "credential not yet valid", "presentation expired",
                "credential subject does not match the holder", "missing required credential type"]
    assert len(set(messages)) == len(messages)


# --- status lists -------------------------------------------------------------------------------


def test_status_list_bits_count_from_the_left() -> None:
    bits = vc.set_status(vc.new_status_list(16), 0)
    bits = vc.set_status(bits, 9)
    assert bits == bytes([0b1000_0000, 0b0100_0000])
    assert vc.get_status(bits, 0) and vc.get_status(bits, 9) and not vc.get_status(bits, 1)
    assert vc.set_status(bits, 0, False) == bytes([0, 0b0100_0000])
    with pytest.raises(AuthError, match="out of range"):
        vc.get_status(bits, 16)
    with pytest.raises(ConfigError):
        vc.set_status(bits, -1)
    with pytest.raises(ConfigError):
        vc.new_status_list(7)


def test_status_list_encoding_is_multibase_base64url_gzip() -> None:
    bits = vc.set_status(vc.new_status_list(), 131_071)
    encoded = vc.encode_status_list(bits)
    assert encoded.startswith("uH4sI") and "=" not in encoded
    assert len(vc.new_status_list()) == 16_384
    assert vc.decode_status_list(encoded) == bits
    assert gzip.decompress(base64.urlsafe_b64decode(encoded[1:] + "==")) == bits


def test_status_list_decoding_is_lenient_on_statuslist2021() -> None:
    bits = vc.set_status(vc.new_status_list(), 5)
    packed = gzip.compress(bits)
    assert vc.decode_status_list(base64.urlsafe_b64encode(packed).decode()) == bits
    assert vc.decode_status_list(base64.b64encode(packed).decode()) == bits


def test_status_list_garbage_and_bombs_refused() -> None:
    with pytest.raises(AuthError, match="cannot be decoded"):
        vc.decode_status_list("u!!!notbase64")
    with pytest.raises(AuthError, match="cannot be decoded"):
        vc.decode_status_list("z" + "1" * 40)
    bomb = base64.urlsafe_b64encode(gzip.compress(bytes(vc.MAX_STATUS_LIST_BYTES + 1)))
    with pytest.raises(AuthError, match="too large"):
        vc.decode_status_list("u" + bomb.decode().rstrip("="))


@given(st.lists(st.integers(0, 1023), max_size=30))
def test_status_list_round_trip(indices: list[int]) -> None:
    bits = vc.new_status_list(1024)
    for i in indices:
        bits = vc.set_status(bits, i)
    decoded = vc.decode_status_list(vc.encode_status_list(bits))
    assert {i for i in range(1024) if vc.get_status(decoded, i)} == set(indices)


def test_status_list_credential_round_trip(authority_key: Any, ring: KeyRing) -> None:
    bits = vc.set_status(vc.new_status_list(), 42)
    token = vc.issue_status_list_credential(authority_key, kid=AUTHORITY_KID, issuer=AUTHORITY,
                                            url=LIST_URL, bits=bits, now=NOW, valid_s=DAY)
    body = jwt.decode(token, options={"verify_signature": False})["vc"]
    assert body["type"] == ["VerifiableCredential", "BitstringStatusListCredential"]
    assert body["credentialSubject"]["type"] == "BitstringStatusList"
    args: dict[str, Any] = {"issuer": AUTHORITY, "url": LIST_URL, "now": NOW + 1,
                            "leeway_s": LEEWAY, "resolve_key": ring.public_key}
    assert vc.verify_status_list_credential(token, **args) == bits
    with pytest.raises(AuthError, match="is not issued by"):
        vc.verify_status_list_credential(token, **{**args, "issuer": HOLDER})
    with pytest.raises(AuthError, match="id is not"):
        vc.verify_status_list_credential(token, **{**args, "url": LIST_URL + "2"})
    with pytest.raises(AuthError, match="status list expired"):
        vc.verify_status_list_credential(token, **{**args, "now": NOW + 2 * DAY})
    with pytest.raises(AuthError, match="purpose"):
        vc.verify_status_list_credential(token, **{**args, "purpose": "suspension"})
    forged = vc.issue_status_list_credential(ec.generate_private_key(ec.SECP256R1()),
                                             kid=AUTHORITY_KID, issuer=AUTHORITY, url=LIST_URL,
                                             bits=bits, now=NOW, valid_s=DAY)
    with pytest.raises(AuthError, match="status list: signature invalid"):
        vc.verify_status_list_credential(forged, **args)


# --- identity additions -------------------------------------------------------------------------


def test_p256_self_issued_token(authority_key: Any, ring: KeyRing) -> None:
    token = issue_token(authority_key, kid=AUTHORITY_KID, issuer=AUTHORITY, audience=VERIFIER,
                        now=NOW, jti="j", ttl_s=60)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    claims = verify_token(token, audience=VERIFIER, now=NOW, leeway_s=0, keys=ring)
    assert claims.issuer == AUTHORITY and claims.kid == AUTHORITY_KID
    jwk = signing_public_jwk(authority_key)
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256" and "d" not in jwk
    other = KeyRing({AUTHORITY_KID: signing_public_jwk(ec.generate_private_key(ec.SECP256R1()))})
    with pytest.raises(AuthError, match="signature invalid"):
        verify_token(token, audience=VERIFIER, now=NOW, leeway_s=0, keys=other)


def test_dcp_token_carries_a_token_claim(holder_key: Any, ring: KeyRing) -> None:
    token = issue_dcp_token(holder_key, kid=HOLDER_KID, issuer=HOLDER, audience=VERIFIER,
                            now=NOW, jti="j", ttl_s=60, access_token="at-1")
    claims = verify_dcp_token(token, audience=VERIFIER, now=NOW, leeway_s=0, keys=ring)
    assert claims.access_token == "at-1" and claims.issuer == HOLDER
    plain = issue_token(holder_key, kid=HOLDER_KID, issuer=HOLDER, audience=VERIFIER, now=NOW,
                        jti="j", ttl_s=60)
    assert "token" not in jwt.decode(plain, options={"verify_signature": False})
    with pytest.raises(AuthError, match="missing claim token"):
        verify_dcp_token(plain, audience=VERIFIER, now=NOW, leeway_s=0, keys=ring)
    with pytest.raises(ConfigError):
        issue_dcp_token(holder_key, kid=HOLDER_KID, issuer=HOLDER, audience=VERIFIER, now=NOW,
                        jti="j", ttl_s=60, access_token="")


@pytest.mark.parametrize(("did", "url"), [
    ("did:web:example.com", "https://example.com/.well-known/did.json"),
    ("did:web:example.com%3A8443", "https://example.com:8443/.well-known/did.json"),
    ("did:web:example.com%3A8443:tenants:acme", "https://example.com:8443/tenants/acme/did.json"),
    ("did:web:w3c-ccg.github.io:user:alice", "https://w3c-ccg.github.io/user/alice/did.json"),
    ("did:web:127.0.0.1%3A9443", "https://127.0.0.1:9443/.well-known/did.json"),
])
def test_did_web_to_url(did: str, url: str) -> None:
    assert did_web_to_url(did) == url


@pytest.mark.parametrize("did", [
    "did:key:z6Mk", "did:web:", "did:web:example.com:", "did:web:example.com#key-1",
    "did:web:example.com?x=1", "did:web:example.com::a", "did:web:example.com:..",
    "did:web:example.com:a%2Fb", "did:web:user%40evil.com", "did:web:a/b",
])
def test_did_web_to_url_refuses(did: str) -> None:
    with pytest.raises(AuthError):
        did_web_to_url(did)


def test_did_web_round_trip_and_http_flag() -> None:
    did = did_web_from_url("https://alpha.example.org:8443")
    assert did_web_to_url(did) == "https://alpha.example.org:8443/.well-known/did.json"
    assert did_web_to_url(did, scheme="http").startswith("http://alpha")


def test_document_keys(authority_key: Any, holder_key: Any) -> None:
    document = build_did_document(HOLDER, "https://h/dsp", [
        (HOLDER_KID, signing_public_jwk(holder_key)),
        (f"{HOLDER}#key-2", signing_public_jwk(authority_key))])
    assert list(document_keys(document, HOLDER)) == [HOLDER_KID, f"{HOLDER}#key-2"]
    document["capabilityInvocation"] = ["#key-2"]  # relative reference
    assert list(document_keys(document, HOLDER)) == [f"{HOLDER}#key-2"]
    assert list(document_keys(document, HOLDER, relationship="assertionMethod")) == [
        HOLDER_KID, f"{HOLDER}#key-2"]
    del document["capabilityInvocation"]  # EDC documents may omit it: all methods count
    document["verificationMethod"][0]["id"] = "#key-1"
    assert HOLDER_KID in document_keys(document, HOLDER)
    KeyRing(document_keys(document, HOLDER))


def test_document_keys_refusals(holder_key: Any) -> None:
    jwk = signing_public_jwk(holder_key)
    document = build_did_document(HOLDER, "https://h/dsp", [(HOLDER_KID, jwk)])
    with pytest.raises(AuthError, match="is not"):
        document_keys(document, VERIFIER)
    twice = {**document, "verificationMethod": document["verificationMethod"] * 2}
    with pytest.raises(AuthError, match="listed twice"):
        document_keys(twice, HOLDER)
    foreign = {**document, "verificationMethod": [
        {**document["verificationMethod"][0], "id": f"{VERIFIER}#key-1"}]}
    with pytest.raises(AuthError, match="not under the DID"):
        document_keys(foreign, HOLDER)
    embedded = {**document, "verificationMethod": [], "capabilityInvocation": [
        {"id": "#k", "type": "JsonWebKey2020", "publicKeyJwk": jwk}]}
    assert document_keys(embedded, HOLDER) == {f"{HOLDER}#k": jwk}


def test_credential_service_entry(holder_key: Any) -> None:
    document = build_did_document(HOLDER, "https://h/dsp/2025-1",
                                  [(HOLDER_KID, signing_public_jwk(holder_key))])
    assert service_endpoint(document, "CredentialService") is None
    document = with_credential_service(document, "https://h/cs")
    document = with_credential_service(document, "https://h/cs2")
    assert service_endpoint(document, "CredentialService") == "https://h/cs2"
    assert service_endpoint(document, "DataService") == "https://h/dsp/2025-1"
    assert len(document["service"]) == 2
