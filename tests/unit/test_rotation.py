"""connector keys rotate: a new key published and used, old tokens still verifying, late retire."""

from __future__ import annotations

import base64
import json
import logging
import stat
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from connector.cli import main
from connector.config import load_settings
from connector.core.errors import AuthError, ConfigError
from connector.core.identity import KeyRing, document_keys, issue_token, verify_token
from connector.keys import load_any_signing_key
from connector.participant.init import init_folder
from connector.participant.keys import (
    ROTATIONS_FILE,
    activate_signing_key,
    retire_signing_key,
    rotate_signing_key,
)
from connector.participant.lint import check_folder

T0 = 1_750_000_000.0
AUDIENCE = "did:web:peer.example.org"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    init_folder(tmp_path / "alpha", name="alpha", url="https://127.0.0.1:8443")
    return tmp_path / "alpha"


def _token(dir: Path, now: float) -> str:
    settings = load_settings(dir)
    return issue_token(load_any_signing_key(settings.signing_key), kid=settings.signing_kid,
                       issuer=settings.did, audience=AUDIENCE, now=int(now),
                       jti=str(uuid.uuid4()), ttl_s=settings.token_ttl_s)


def _ring(dir: Path) -> KeyRing:
    document = json.loads((dir / "did.json").read_text())
    return KeyRing(document_keys(document, document["id"]))


def _verify(dir: Path, token: str, now: float) -> None:
    verify_token(token, audience=AUDIENCE, now=int(now), leeway_s=5, keys=_ring(dir))


def test_rotation_keeps_old_tokens_verifying(folder: Path) -> None:
    old_token = _token(folder, T0)
    kid = rotate_signing_key(folder, now=T0)
    settings = load_settings(folder)
    assert kid.endswith("#key-2") and settings.signing_kid == kid
    assert settings.signing_key == settings.root / "keys/signing-key-2.pem"
    assert stat.S_IMODE(settings.signing_key.stat().st_mode) == 0o600
    new_token = _token(folder, T0 + 1)
    # A verifier that re-read did.json accepts both, with no failure in between.
    _verify(folder, old_token, T0 + 2)
    _verify(folder, new_token, T0 + 2)
    document = json.loads((folder / "did.json").read_text())
    assert document["capabilityInvocation"] == [f"{settings.did}#key-1", kid]
    assert check_folder(folder) == []


def test_retire_too_early_is_refused_then_allowed(folder: Path) -> None:
    old_kid = load_settings(folder).signing_kid
    old_token = _token(folder, T0)
    rotate_signing_key(folder, now=T0)
    ttl = load_settings(folder).token_ttl_s + load_settings(folder).clock_leeway_s
    with pytest.raises(ConfigError, match="stay valid until"):
        retire_signing_key(folder, "key-1", now=T0 + ttl - 1)
    _verify(folder, old_token, T0 + ttl - 1)  # still needed: the token is still valid
    assert retire_signing_key(folder, "key-1", now=T0 + ttl) == ttl
    assert not (folder / "keys/signing-key.pem").exists()
    with pytest.raises(AuthError, match="unknown key id"):
        _verify(folder, old_token, T0 + 10)
    assert old_kid not in json.dumps(json.loads((folder / "did.json").read_text()))
    _verify(folder, _token(folder, T0 + ttl), T0 + ttl)
    assert check_folder(folder) == []


def test_retire_refusals(folder: Path) -> None:
    with pytest.raises(ConfigError, match="current signing key"):
        retire_signing_key(folder, "key-1", now=T0)
    rotate_signing_key(folder, now=T0)
    with pytest.raises(ConfigError, match="no rotation record"):
        retire_signing_key(folder, "key-7", now=T0 + 10_000)
    retire_signing_key(folder, "key-1", now=T0 + 10_000)
    with pytest.raises(ConfigError, match=r"not in did\.json"):
        retire_signing_key(folder, "key-1", now=T0 + 20_000)


def test_numbers_are_never_reused(folder: Path) -> None:
    rotate_signing_key(folder, now=T0)
    rotate_signing_key(folder, now=T0 + 1)
    retire_signing_key(folder, "key-1", now=T0 + 10_000)
    retire_signing_key(folder, "key-2", now=T0 + 10_000)
    assert rotate_signing_key(folder, now=T0 + 10_001).endswith("#key-4")


def test_publish_first_then_activate(folder: Path) -> None:
    kid = rotate_signing_key(folder, publish_only=True, now=T0)
    assert load_settings(folder).signing_kid.endswith("#key-1")
    assert kid in _ring(folder)
    with pytest.raises(ConfigError, match="current signing key"):
        retire_signing_key(folder, "key-1", now=T0 + 10_000)
    activate_signing_key(folder, "key-2", now=T0 + 300)
    assert load_settings(folder).signing_kid == kid
    record = json.loads((folder / ROTATIONS_FILE).read_text())
    assert record[load_settings(folder).did + "#key-1"]["signing_until"] == int(T0 + 300)
    with pytest.raises(ConfigError, match="already signs"):
        activate_signing_key(folder, kid)


def test_cli_rotate_prints_no_key_material(folder: Path, capsys: pytest.CaptureFixture[str],
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert main(["keys", "rotate", str(folder)]) == 0
    assert main(["keys", "rotate", str(folder), "--retire", "key-1"]) == 2
    out = capsys.readouterr()
    assert "key-2" in out.out and "stay valid until" in out.err
    _assert_no_key_material(folder, [out.out, out.err, caplog.text])


def _assert_no_key_material(folder: Path, texts: list[str]) -> None:
    """No PEM body and no private JWK 'd' value of any key in keys/ appears in ``texts``."""
    for path in (folder / "keys").glob("*.pem"):
        pem = path.read_text()
        body = "".join(pem.splitlines()[1:-1])
        key = load_any_signing_key(path)
        d = private_jwk_d(key)
        for text in texts:
            assert body[:40] not in text and "PRIVATE KEY" not in text and d not in text


def private_jwk_d(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """The JWK 'd' member of a private key (RFC 8037 / RFC 7518 §6.2.2.1)."""
    if isinstance(key, Ed25519PrivateKey):
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    else:
        raw = key.private_numbers().private_value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
