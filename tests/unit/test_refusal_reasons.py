"""An unknown key id is explained to the caller: not pinned here, pinned with an older key,
or a DCP token sent to a participant that trusts pinned peers only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connector.core.errors import AuthError
from connector.core.identity import (
    KeyRing,
    issue_dcp_token,
    issue_token,
    public_jwk,
    verify_dcp_token,
)
from connector.service.auth import Verifier

US = "did:web:provider.example"
THEM = "did:web:consumer.example"
NOW = 1_800_000_000


@dataclass
class Pin:
    keys: dict[str, dict[str, Any]]
    attributes: dict[str, Any] = field(default_factory=dict)
    url: str = "https://consumer.example"
    dsp_base: str | None = None


def _verifier(peers: dict[str, Pin]) -> Verifier:
    return Verifier(did=US, peers=peers, leeway_s=30, clock=lambda: NOW)


def _refusal(verifier: Verifier, token: str) -> str:
    with pytest.raises(AuthError) as refused:
        verifier.verify(f"Bearer {token}")
    return refused.value.message


def _token(key: Ed25519PrivateKey, kid: str, jti: str = "j1") -> str:
    return issue_token(key, kid=kid, issuer=THEM, audience=US, now=NOW, jti=jti, ttl_s=60)


def test_a_caller_not_pinned_here_is_told_so() -> None:
    key = Ed25519PrivateKey.generate()
    message = _refusal(_verifier({}), _token(key, f"{THEM}#key-1"))
    assert message.startswith("unknown key id")  # the metrics' reason stays "unknown_key"
    assert "not pinned by this provider" in message and "connector trust add" in message


def test_a_caller_pinned_with_an_older_key_is_told_to_have_us_re_pin() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    verifier = _verifier({THEM: Pin(keys={f"{THEM}#key-1": public_jwk(old)})})
    message = _refusal(verifier, _token(new, f"{THEM}#key-2"))
    assert "pinned with an older key" in message and "key-1 only" in message
    assert "re-pin" in message


def test_a_dcp_token_to_a_pinned_participant_names_the_mode_mismatch() -> None:
    key = Ed25519PrivateKey.generate()
    token = issue_dcp_token(key, kid=f"{THEM}#key-1", issuer=THEM, audience=US, now=NOW,
                            jti="j1", ttl_s=60, access_token="at")
    assert "identity modes differ" in _refusal(_verifier({}), token)


def test_other_refusals_are_unchanged() -> None:
    key = Ed25519PrivateKey.generate()
    verifier = _verifier({THEM: Pin(keys={f"{THEM}#key-1": public_jwk(key)})})
    token = _token(key, f"{THEM}#key-1")
    verifier.verify(f"Bearer {token}")
    assert _refusal(verifier, token) == "token replayed (jti already used)"


def test_a_pinned_token_to_a_dcp_participant_names_the_mode_mismatch() -> None:
    key = Ed25519PrivateKey.generate()
    ring = KeyRing({f"{THEM}#key-1": public_jwk(key)})
    with pytest.raises(AuthError, match=r"missing claim token .*identity modes differ"):
        verify_dcp_token(_token(key, f"{THEM}#key-1"), audience=US, now=NOW, leeway_s=30,
                         keys=ring)
