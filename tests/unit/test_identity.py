"""core.identity: did:web names, DID documents, self-issued tokens and every refusal."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm

from connector.core.errors import AuthError, ConfigError
from connector.core.identity import (
    KeyRing,
    TokenClaims,
    build_did_document,
    did_web_from_url,
    issue_token,
    public_jwk,
    verify_token,
)
from connector.core.messages import MAX_ID_LENGTH

ISSUER = "did:web:alpha.example.org%3A8443"
KID = f"{ISSUER}#key-1"
AUDIENCE = "did:web:beta.example.org%3A9443"
NOW = 1_750_000_000
TTL = 300
LEEWAY = 5


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def ring(key: Ed25519PrivateKey) -> KeyRing:
    return KeyRing({KID: public_jwk(key)})


def _token(key: Ed25519PrivateKey, **overrides: Any) -> str:
    args: dict[str, Any] = {"kid": KID, "issuer": ISSUER, "audience": AUDIENCE, "now": NOW,
                            "jti": "jti-1", "ttl_s": TTL}
    args.update(overrides)
    return issue_token(key, **args)


def _raw_token(key: Ed25519PrivateKey, claims: dict[str, Any], kid: str = KID) -> str:
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


def _claims(**overrides: Any) -> dict[str, Any]:
    claims = {"iss": ISSUER, "sub": ISSUER, "aud": AUDIENCE, "jti": "j", "iat": NOW,
              "exp": NOW + TTL}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _verify(token: str, ring: KeyRing, *, now: int = NOW, audience: str = AUDIENCE) -> TokenClaims:
    return verify_token(token, audience=audience, now=now, leeway_s=LEEWAY, keys=ring)


# --- did:web ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "did"),
    [
        ("https://127.0.0.1:8443", "did:web:127.0.0.1%3A8443"),
        ("https://example.org", "did:web:example.org"),
        ("https://Example.ORG:443/", "did:web:example.org%3A443"),
        ("https://example.org/users/alice", "did:web:example.org:users:alice"),
        ("https://ccg.example.io:8443/user/alice/", "did:web:ccg.example.io%3A8443:user:alice"),
    ],
)
def test_did_web_from_url(url: str, did: str) -> None:
    assert did_web_from_url(url) == did


@pytest.mark.parametrize("url", ["http://example.org", "https://", "https://u@example.org",
                                 "https://example.org/?q=1", "example.org"])
def test_did_web_from_url_refuses(url: str) -> None:
    with pytest.raises(ConfigError):
        did_web_from_url(url)


# --- keys and DID documents --------------------------------------------------------------------


def test_public_jwk_is_rfc8037_okp(key: Ed25519PrivateKey) -> None:
    jwk = public_jwk(key)
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and "d" not in jwk
    assert len(base64.urlsafe_b64decode(jwk["x"] + "=")) == 32
    assert public_jwk(key.public_key()) == jwk


def test_did_document_lists_key_in_every_relationship(key: Ed25519PrivateKey) -> None:
    doc = build_did_document(ISSUER, "https://alpha.example.org:8443/dsp/2025-1",
                             [(KID, public_jwk(key))])
    assert doc["id"] == ISSUER
    assert doc["@context"][0] == "https://www.w3.org/ns/did/v1"
    (method,) = doc["verificationMethod"]
    assert method == {"id": KID, "type": "JsonWebKey2020", "controller": ISSUER,
                      "publicKeyJwk": public_jwk(key)}
    for relationship in ("authentication", "assertionMethod", "capabilityInvocation"):
        assert doc[relationship] == [KID]
    assert doc["service"] == [{"id": f"{ISSUER}#dsp", "type": "DataService",
                               "serviceEndpoint": "https://alpha.example.org:8443/dsp/2025-1"}]
    json.dumps(doc)  # serialisable as is


# --- KeyRing -----------------------------------------------------------------------------------


def test_keyring_converts_once_and_answers_none_for_unknown(key: Ed25519PrivateKey) -> None:
    ring = KeyRing({KID: public_jwk(key)})
    first = ring.public_key(KID)
    assert first is not None and first is ring.public_key(KID)
    assert ring.public_key(f"{ISSUER}#key-2") is None
    assert KID in ring and len(ring) == 1


def test_keyring_refuses_private_and_unsupported_jwks() -> None:
    with pytest.raises(ConfigError, match="private key material"):
        KeyRing({KID: {"kty": "OKP", "crv": "Ed25519", "x": "AA", "d": "AA"}})
    with pytest.raises(ConfigError, match=KID):
        KeyRing({KID: {"kty": "RSA", "n": "AQAB", "e": "AQAB"}})
    with pytest.raises(ConfigError, match=KID):
        KeyRing({KID: {"kty": "OKP", "crv": "Ed25519", "x": "!!"}})


def test_es256_token_verifies_with_ec_jwk() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    ring = KeyRing({KID: jwk})
    token = jwt.encode(_claims(), ec_key, algorithm="ES256", headers={"kid": KID})
    assert _verify(token, ring).issuer == ISSUER
    # The alg comes from the pinned key: a token claiming another alg is refused.
    forged = jwt.encode(_claims(), Ed25519PrivateKey.generate(), algorithm="EdDSA",
                        headers={"kid": KID})
    with pytest.raises(AuthError, match="signature invalid"):
        _verify(forged, ring)


# --- tokens: the round trip --------------------------------------------------------------------


def test_issue_verify_round_trip(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    token = _token(key)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": KID}
    claims = _verify(token, ring, now=NOW + 10)
    assert claims == TokenClaims(issuer=ISSUER, audience=AUDIENCE, jti="jti-1",
                                 issued_at=NOW, expires_at=NOW + TTL, kid=KID)


def test_audience_may_be_a_list(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    token = _raw_token(key, _claims(aud=["did:web:other", AUDIENCE]))
    assert _verify(token, ring).audience == AUDIENCE


def test_accepted_within_leeway(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    token = _token(key)
    assert _verify(token, ring, now=NOW + TTL + LEEWAY).jti == "jti-1"
    assert _verify(token, ring, now=NOW - LEEWAY).jti == "jti-1"  # our clock slightly behind


# --- tokens: each refusal ----------------------------------------------------------------------


def _refused(token: str, ring: KeyRing, message: str, **kwargs: Any) -> AuthError:
    with pytest.raises(AuthError, match=message) as info:
        _verify(token, ring, **kwargs)
    assert token not in str(info.value)
    signature = token.split(".")[-1]
    assert not signature or signature not in str(info.value)
    return info.value


def test_forged_signature_with_another_key(ring: KeyRing) -> None:
    _refused(_token(Ed25519PrivateKey.generate()), ring, "^signature invalid$")


def test_tampered_payload(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    header, _, signature = _token(key).split(".")
    other = _token(key, jti="jti-2").split(".")[1]
    _refused(f"{header}.{other}.{signature}", ring, "^signature invalid$")


def test_unknown_kid(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    token = _token(key, kid=f"{ISSUER}#key-2")
    _refused(token, ring, "^unknown key id 'did:web:alpha.example.org%3A8443#key-2'$")


def test_wrong_audience(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    _refused(_token(key), ring, "^wrong audience", audience="did:web:someone-else")


def test_expired_beyond_leeway(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    _refused(_token(key), ring, "^token expired$", now=NOW + TTL + LEEWAY + 1)


def test_iat_in_the_future(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    _refused(_token(key), ring, "^token not yet valid$", now=NOW - LEEWAY - 1)


def test_nbf_in_the_future(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    token = _raw_token(key, _claims(nbf=NOW + 60))
    _refused(token, ring, "^token not yet valid$")


def test_issuer_and_subject_differ(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    token = _raw_token(key, _claims(sub="did:web:mallory.example.org"))
    _refused(token, ring, "^issuer and subject differ$")


def test_kid_not_under_issuer(key: Ed25519PrivateKey) -> None:
    # Even a key the ring holds may only vouch for its own DID.
    mallory = "did:web:mallory.example.org"
    ring = KeyRing({KID: public_jwk(key)})
    token = _raw_token(key, _claims(iss=mallory, sub=mallory), kid=KID)
    _refused(token, ring, "^key id .* is not under issuer 'did:web:mallory.example.org'$")
    _refused(_raw_token(key, _claims(), kid=ISSUER), ring, "is not under issuer")


def test_missing_kid(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    token = jwt.encode(_claims(), key, algorithm="EdDSA")
    _refused(token, ring, "^malformed token: header has no kid$")


def test_missing_jti(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    _refused(_raw_token(key, _claims(jti=None)), ring, "^missing claim jti$")


def test_missing_exp(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    _refused(_raw_token(key, _claims(exp=None)), ring, "^missing claim exp$")


def test_unsigned_alg_none(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    token = jwt.encode(_claims(), "", algorithm="none", headers={"kid": KID})
    _refused(token, ring, "^signature invalid")


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b", "a.b.c", "a.b.c.d", "eyJhbGciOiJFZERTQSJ9.bm90IGpzb24.AA",
     "WyJsaXN0Il0.e30.AA"],
)
def test_garbage_token(token: str, ring: KeyRing) -> None:
    with pytest.raises(AuthError, match=r"^malformed token"):
        _verify(token, ring)


def test_crit_header_is_refused(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    token = jwt.encode(_claims(), key, algorithm="EdDSA",
                       headers={"kid": KID, "crit": ["exp"]})
    _refused(token, ring, "^malformed token: unsupported critical header$")


def test_non_base64url_characters_are_refused(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    header, payload, signature = _token(key).split(".")
    for bad in (f"{header}.{payload}.{signature}=", f"{header}.{payload}.{signature[:4]} "
                f"{signature[4:]}", f"{header}.{payload}+.{signature}"):
        with pytest.raises(AuthError, match=r"^malformed token"):
            _verify(bad, ring)


@settings(max_examples=50, deadline=None)
@given(
    issuer=st.from_regex(r"did:web:[a-z0-9.]{1,20}(%3A[0-9]{1,5})?", fullmatch=True),
    jti=st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=40),
    now=st.integers(min_value=0, max_value=2**40),
    ttl=st.integers(min_value=1, max_value=86_400),
    flip=st.integers(min_value=0),
)
def test_round_trip_and_any_tampering_fails(
    key: Ed25519PrivateKey, issuer: str, jti: str, now: int, ttl: int, flip: int
) -> None:
    kid = f"{issuer}#key-1"
    ring = KeyRing({kid: public_jwk(key)})
    token = issue_token(key, kid=kid, issuer=issuer, audience=AUDIENCE, now=now, jti=jti,
                        ttl_s=ttl)
    claims = verify_token(token, audience=AUDIENCE, now=now + ttl, leeway_s=0, keys=ring)
    assert (claims.issuer, claims.jti, claims.expires_at) == (issuer, jti, now + ttl)
    # Changing any one character of the token makes it fail (never a different valid token).
    i = flip % len(token)
    replacement = "A" if token[i] != "A" else "B"
    tampered = token[:i] + replacement + token[i + 1:]
    with pytest.raises(AuthError):
        verify_token(tampered, audience=AUDIENCE, now=now + ttl, leeway_s=0, keys=ring)


@pytest.mark.parametrize("jti", ["\x00", "a\x00b", "j" * (MAX_ID_LENGTH + 1)])
def test_a_jti_no_store_could_keep_is_refused(key: Ed25519PrivateKey, ring: KeyRing,
                                              jti: str) -> None:
    """U+0000 (PostgreSQL's text cannot hold it) or longer than an index takes: the jti is
    recorded as seen, so the token is refused."""
    with pytest.raises(AuthError, match="jti"):
        verify_token(_token(key, jti=jti), audience=AUDIENCE, now=NOW, leeway_s=LEEWAY,
                     keys=ring)
    assert verify_token(_token(key, jti="j" * MAX_ID_LENGTH), audience=AUDIENCE, now=NOW,
                        leeway_s=LEEWAY, keys=ring).jti == "j" * MAX_ID_LENGTH


def test_non_canonical_base64url_is_refused(key: Ed25519PrivateKey, ring: KeyRing) -> None:
    # A 64-byte signature leaves 4 spare bits in its last character: setting one of them gives
    # another string that the stdlib decodes to the same bytes.
    token = _token(key)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    twin = token[:-1] + alphabet[last ^ 1]
    assert base64.urlsafe_b64decode(twin.split(".")[2] + "==") == base64.urlsafe_b64decode(
        token.split(".")[2] + "==")
    with pytest.raises(AuthError, match=r"^malformed token"):
        _verify(twin, ring)
