"""core.dcp: presentation queries and responses, scope selection, access tokens."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from connector.core import credentials as vc
from connector.core import dcp
from connector.core.errors import AuthError, MalformedMessage
from connector.core.identity import KeyRing, signing_public_jwk

HOLDER = "did:web:alpha.example.org"
KID = f"{HOLDER}#key-1"
VERIFIER = "did:web:beta.example.org"
NOW = 1_750_000_000


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _credential(key: Any, types: list[str], credential_id: str) -> str:
    return vc.issue_credential(key, kid="did:web:auth#key-1", issuer="did:web:auth",
                               subject=HOLDER, credential_id=credential_id, now=NOW,
                               valid_s=60, types=types)


def test_query_round_trip() -> None:
    body = dcp.presentation_query([dcp.MEMBERSHIP_SCOPE])
    assert body["type"] == "PresentationQueryMessage" and dcp.DCP_CONTEXT in body["@context"]
    (scope,) = dcp.parse_presentation_query(body)
    assert scope == dcp.Scope("org.eclipse.edc.vc.type", "type", "MembershipCredential", "read")


@pytest.mark.parametrize(("body", "status"), [
    ({"type": "PresentationQueryMessage"}, 400),
    ({"type": "PresentationQueryMessage", "scope": []}, 400),
    ({"type": "PresentationQueryMessage", "scope": ["x:y"], "presentationDefinition": {}}, 400),
    ({"type": "PresentationQueryMessage", "presentationDefinition": None}, 400),
    ({"type": "PresentationQueryMessage", "presentationDefinition": {}}, 400),
    ({"type": "PresentationQueryMessage", "presentationDefinition": {"id": "pd"}}, 501),
    ({"type": "CatalogRequestMessage", "scope": ["a:b"]}, 400),
    ({"type": "PresentationQueryMessage", "scope": ["nocolon"]}, 400),
    ([], 400),
])
def test_query_refusals(body: Any, status: int) -> None:
    with pytest.raises(MalformedMessage if status == 400 else dcp.UnsupportedQuery) as info:
        dcp.parse_presentation_query(body)
    assert info.value.status == status


def test_scope_forms() -> None:
    assert dcp.parse_scope("org.eclipse.dspace.dcp.vc.type:Member").value == "Member"
    by_id = dcp.parse_scope("org.eclipse.dspace.dcp.vc.id:urn:uuid:1:read")
    assert (by_id.kind, by_id.value, by_id.operation) == ("id", "urn:uuid:1", "read")


def test_selection_honours_the_granted_scopes(key: Any) -> None:
    member = _credential(key, ["MembershipCredential"], "urn:uuid:m")
    sensitive = _credential(key, ["SensitiveDataCredential"], "urn:uuid:s")
    wanted = dcp.parse_presentation_query(dcp.presentation_query([
        "org.eclipse.dspace.dcp.vc.type:MembershipCredential:read",
        "org.eclipse.dspace.dcp.vc.type:SensitiveDataCredential:read"]))
    assert dcp.select_credentials([member, sensitive], wanted, None) == [member, sensitive]
    granted = [dcp.MEMBERSHIP_SCOPE]  # another alias, same type
    assert dcp.select_credentials([member, sensitive], wanted, granted) == [member]
    by_id = [dcp.parse_scope("org.eclipse.dspace.dcp.vc.id:urn:uuid:s")]
    assert dcp.select_credentials([member, sensitive], by_id, None) == [sensitive]


def test_response_round_trip() -> None:
    body = dcp.presentation_response(["a.b.c"])
    assert dcp.parse_presentation_response(body) == ["a.b.c"]
    for bad in ({}, {"presentation": []}, {"presentation": [{"proof": {}}]}, "x"):
        with pytest.raises(AuthError):
            dcp.parse_presentation_response(bad)


def test_access_token(key: Any) -> None:
    ring = KeyRing({KID: signing_public_jwk(key)})
    token = dcp.issue_access_token(key, kid=KID, holder=HOLDER, verifier=VERIFIER,
                                   scopes=[dcp.MEMBERSHIP_SCOPE], now=NOW, jti="a", ttl_s=60)
    args: dict[str, Any] = {"holder": HOLDER, "verifier": VERIFIER, "now": NOW, "leeway_s": 5,
                            "keys": ring}
    assert dcp.verify_access_token(token, **args) == (dcp.MEMBERSHIP_SCOPE,)
    with pytest.raises(AuthError, match="another verifier"):
        dcp.verify_access_token(token, **{**args, "verifier": "did:web:mallory"})
    with pytest.raises(AuthError, match="expired"):
        dcp.verify_access_token(token, **{**args, "now": NOW + 120})
    with pytest.raises(AuthError, match="not signed by one of our keys"):
        dcp.verify_access_token(token, **{**args, "holder": "did:web:other"})
    forged = dcp.issue_access_token(ec.generate_private_key(ec.SECP256R1()), kid=KID,
                                    holder=HOLDER, verifier=VERIFIER, scopes=[], now=NOW,
                                    jti="b", ttl_s=60)
    with pytest.raises(AuthError, match="signature invalid"):
        dcp.verify_access_token(forged, **args)
