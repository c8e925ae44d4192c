"""The error tree states every status on purpose; JSON depth is bounded before decoding."""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest

from connector.core import codec, errors
from connector.core.errors import Area, ConnectorError, MalformedMessage
from connector.core.identity import AuthError, KeyRing, verify_token
from connector.core.messages import DSP_CONTEXT
from connector.registry.publisher import Signer
from connector.registry.search import RegistrySearch
from connector.registry.store import SearchQuery

# By whose mistake each class is: the caller's (4xx), our configuration (503), a peer (502),
# a bug of ours (500, only ever answered by the middleware).
INTENDED = {
    "ConfigError": 503, "PolicyError": 400, "AuthError": 401, "ModesDiffer": 401,
    "InvalidParameter": 400,
    "ProtocolError": 400, "MalformedMessage": 400, "InvalidTransition": 400,
    "UnknownProcess": 404, "OfferRejected": 400, "CatalogError": 400, "ConflictError": 409,
    "NotFound": 404, "TransferDenied": 403, "PeerError": 502, "AuditError": 503,
    "InternalError": 500,
}


def _tree() -> list[type[ConnectorError]]:
    found, todo = [], [ConnectorError]
    while todo:
        cls = todo.pop()
        found.extend(cls.__subclasses__())
        todo.extend(cls.__subclasses__())
    return [c for c in found if c.__module__ == errors.__name__]


def test_every_class_of_the_tree_states_its_status_on_purpose() -> None:
    tree = {cls.__name__: cls for cls in _tree()}
    assert set(tree) == set(INTENDED), "a new error class needs its intended status here"
    for name, status in INTENDED.items():
        assert tree[name].status == status, name
        assert name in (errors.__doc__ or ""), f"{name} is not drawn in the docstring"
    bugs = [name for name, cls in tree.items() if 500 <= cls.status < 502]
    assert bugs == ["InternalError"], "only a bug is a 500"


async def test_the_setting_to_fix_is_named_by_a_configuration_error() -> None:
    searcher = RegistrySearch([], Signer(did="did:web:x", kid="k", key=None),
                              session=_no_session, cache=None)
    with pytest.raises(errors.ConfigError, match=r"\[registry\] urls.*connector.toml"):
        await searcher.search(SearchQuery(text="x"))


def _no_session() -> aiohttp.ClientSession:
    raise AssertionError("no registry is asked")


@pytest.mark.parametrize(("raw", "depth"), [
    (b"1", 0), (b"{}", 1), (b'[[1], {"a": [2]}]', 3), (b'{"a": "[[[[{{{{"}', 1),
    (b'["\\\\", "\\"[[["]', 1), (b"[" * 100 + b"]" * 100, 100), (b"[]" * 10_000, 1),
])
def test_json_depth_counts_brackets_outside_strings(raw: bytes, depth: int) -> None:
    assert codec.json_depth(raw) == depth


@pytest.mark.parametrize("raw", [b"[" * 5000 + b"]" * 5000,
                                 b'{"a":' * 3000 + b"1" + b"}" * 3000,
                                 b"[" * (codec.MAX_JSON_DEPTH + 1) + b"]" * 65,
                                 b"[" * 100_000])
def test_deep_json_is_a_malformed_message_never_a_recursion_error(raw: bytes) -> None:
    with pytest.raises(MalformedMessage, match="deep") as info:
        codec.decode_json(raw, area=Area.TRANSFER)
    assert info.value.area is Area.TRANSFER and info.value.status == 400


def test_json_as_deep_as_allowed_decodes() -> None:
    depth = codec.MAX_JSON_DEPTH
    doc = codec.decode_json(b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}")
    assert "a" in doc


@pytest.mark.parametrize(("raw", "refused"), [
    (b'{"a": "x\\u0000"}', True),  # the escape of U+0000
    (b'{"a": ["ok", {"b": "\\u00001"}]}', True),  # nested, followed by a digit
    (b'{"a": "x\\\\\\u0000"}', True),  # an escaped backslash, then the escape
    (b'{"a": "x\\\\u0000"}', False),  # an escaped backslash, then the text u0000
    (b'{"\\u0001": 1}', False),  # another control character, which JSON allows escaped
])
def test_u0000_in_a_json_string_is_a_malformed_message(raw: bytes, refused: bool) -> None:
    if not refused:
        assert codec.decode_json(raw)
        return
    with pytest.raises(MalformedMessage, match="U\\+0000") as info:
        codec.decode_json(raw, area=Area.NEGOTIATION)
    assert info.value.status == 400


def test_a_pid_or_an_agreement_id_longer_than_an_index_takes_is_refused() -> None:
    from connector.core.messages import MAX_ID_LENGTH, ContractRequestMessage
    from connector.core.policy.model import PolicySyntaxError, parse_policy

    for length, refused in ((MAX_ID_LENGTH, False), (MAX_ID_LENGTH + 1, True)):
        pid = "p" * length
        doc = {"@context": [DSP_CONTEXT], "@type": "ContractRequestMessage",
               "consumerPid": pid, "offer": {"@id": "o"}, "callbackAddress": "https://x"}
        if refused:
            with pytest.raises(MalformedMessage, match="length"):
                codec.decode(codec.encode_json(doc), ContractRequestMessage,
                             area=Area.NEGOTIATION)
            with pytest.raises(PolicySyntaxError, match="@id longer"):
                parse_policy({"@id": pid, "permission": []})
        else:
            assert codec.decode(codec.encode_json(doc), ContractRequestMessage,
                                area=Area.NEGOTIATION).consumer_pid == pid
            assert parse_policy({"@id": pid, "permission": []}).id == pid


def test_a_token_with_a_deep_json_segment_is_an_auth_error() -> None:
    segment = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).rstrip(b"=").decode()
    for token in (f"{segment}.e30.c2ln", f"eyJhbGciOiJFZERTQSJ9.{segment}.c2ln"):
        with pytest.raises(AuthError, match="malformed token"):
            verify_token(token, keys=KeyRing({}), audience="did:web:x", now=0, leeway_s=5)


def test_a_providers_refusal_of_our_data_token_is_a_403_not_a_502() -> None:
    from connector.adapters.http.management import _refusal

    refused = _refusal(errors.PeerError("data summary answered 403: unknown data token",
                                        peer_status=403))
    assert isinstance(refused, errors.TransferDenied) and refused.status == 403
    assert "unknown data token" in refused.message
    down = errors.PeerError("cannot connect")
    assert _refusal(down) is down and down.status == 502


DEEP = b"[" * 3000 + b"]" * 3000


def test_a_registry_snapshot_with_a_deep_payload_is_refused_as_malformed() -> None:
    from connector.registry.model import claimed_publisher

    segment = base64.urlsafe_b64encode(DEEP).rstrip(b"=").decode()
    with pytest.raises(AuthError, match="malformed snapshot"):
        claimed_publisher(f"eyJhbGciOiJFZERTQSJ9.{segment}.c2ln")


async def test_a_deep_did_document_is_refused_as_not_json() -> None:
    from connector.service.dcp_verifier import DidResolver
    from tests.unit.test_dcp_verifier import FakeHttp

    http = FakeHttp()
    http.pages["https://peer.example/.well-known/did.json"] = (DEEP, {})
    resolver = DidResolver(http, cache_s=300, clock=lambda: 0.0)
    with pytest.raises(AuthError, match="not JSON"):
        await resolver.document("did:web:peer.example")


async def test_an_unusable_key_in_a_peers_did_document_is_an_auth_error_not_ours() -> None:
    from connector.service.dcp_verifier import DidResolver
    from tests.unit.test_dcp_verifier import FakeHttp

    did = "did:web:peer.example"
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "d": "private-material"}
    doc = {"id": did, "verificationMethod": [{"id": f"{did}#k", "type": "JsonWebKey2020",
                                              "controller": did, "publicKeyJwk": jwk}]}
    http = FakeHttp()
    http.pages["https://peer.example/.well-known/did.json"] = (
        json.dumps(doc).encode(), {})
    resolver = DidResolver(http, cache_s=300, clock=lambda: 0.0)
    with pytest.raises(AuthError, match="private key material"):
        await resolver.keys(did, "capabilityInvocation")


def test_nothing_raises_internal_error_only_the_middleware_answers_with_it() -> None:
    from pathlib import Path

    src = Path(errors.__file__).resolve().parents[1]
    raising = [p for p in src.rglob("*.py") if "raise InternalError" in p.read_text()]
    assert raising == []
