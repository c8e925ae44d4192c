"""connector authority init/issue/revoke and credentials import, checked through the core."""

from __future__ import annotations

import json
import logging
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from connector import authority
from connector.cli import main
from connector.config import load_settings
from connector.core import credentials as vc
from connector.core.errors import AuthError, ConfigError, NotFound
from connector.core.identity import KeyRing, document_keys, parse_jws
from connector.keys import load_any_signing_key
from connector.participant import credentials
from connector.participant.init import init_folder
from tests.unit.test_rotation import _assert_no_key_material

AUTHORITY_URL = "https://127.0.0.1:7443"


@pytest.fixture
def space(tmp_path: Path) -> tuple[Path, Path]:
    authority.init_authority(tmp_path / "authority", url=AUTHORITY_URL)
    init_folder(tmp_path / "alpha", name="alpha", url="https://127.0.0.1:8443")
    return tmp_path / "authority", tmp_path / "alpha"


def _ring(*folders: Path) -> KeyRing:
    jwks: dict[str, dict[str, Any]] = {}
    for folder in folders:
        document = json.loads((folder / "did.json").read_text())
        jwks |= document_keys(document, document["id"], relationship="assertionMethod")
    return KeyRing(jwks)


def _present(alpha: Path, credentials: list[str], audience: str) -> str:
    settings = load_settings(alpha)
    return vc.issue_presentation(
        load_any_signing_key(settings.signing_key), kid=settings.signing_kid,
        holder=settings.did, audience=audience, credentials=credentials,
        now=int(time.time()), jti=str(uuid.uuid4()), ttl_s=60)


def test_init_layout_and_modes(space: tuple[Path, Path]) -> None:
    folder, _ = space
    settings = authority.load_authority(folder)
    assert settings.did == "did:web:127.0.0.1%3A7443"
    assert settings.status_url == AUTHORITY_URL + "/status/revocation"
    for name in ("keys/signing-key.pem", "keys/tls-key.pem"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "keys").stat().st_mode) == 0o700
    document = json.loads((folder / "did.json").read_text())
    assert document["verificationMethod"][0]["publicKeyJwk"]["crv"] == "P-256"
    assert "service" not in document
    assert len((folder / authority.STATUS_FILE).read_bytes()) == 16_384
    with pytest.raises(ConfigError, match="not an empty directory"):
        authority.init_authority(folder, url=AUTHORITY_URL)


def test_issue_verify_revoke(space: tuple[Path, Path]) -> None:
    folder, alpha = space
    settings = authority.load_authority(folder)
    member = load_settings(alpha).did
    credential_id, token = authority.issue_credential(folder, subject=member,
                                                      attributes={"country": "DE"})
    ring = _ring(folder, alpha)
    audience = "did:web:beta.example.org"

    def verify(bits: bytes) -> vc.VerifiedClaims:
        return vc.verify_presentation(
            _present(alpha, [token], audience), holder=member, audience=audience,
            now=int(time.time()), leeway_s=5, resolve_key=ring.public_key,
            trusted_issuers={settings.did: [vc.MEMBERSHIP_CREDENTIAL]},
            status_lists={settings.status_url: bits}.get, required_types=["MembershipCredential"])

    def served_bits() -> bytes:
        return vc.verify_status_list_credential(
            authority.status_list_credential(folder), issuer=settings.did,
            url=settings.status_url, now=int(time.time()), leeway_s=5,
            resolve_key=ring.public_key)

    claims = verify(served_bits())
    assert claims.membership == "active"
    assert claims.attributes == {"country": "DE", "memberOf": settings.did}
    index = authority.revoke_credential(folder, credential_id)
    assert authority.revoke_credential(folder, credential_id.removeprefix("urn:uuid:")) == index
    with pytest.raises(AuthError, match="credential revoked"):
        verify(served_bits())
    events = [json.loads(line)["event"] for line in (folder / "issued.jsonl").open()]
    assert events == ["issued", "revoked"]
    with pytest.raises(NotFound):
        authority.revoke_credential(folder, "urn:uuid:nope")


def test_a_membership_credential_names_the_space(space: tuple[Path, Path]) -> None:
    # EDC 0.14 refuses a credentialSubject holding nothing but its id (found by make interop's
    # DCP mode: "CredentialSubject must contain claims"); memberOf names the data space.
    folder, alpha = space
    settings = authority.load_authority(folder)
    _, token = authority.issue_credential(folder, subject=load_settings(alpha).did)
    subject = parse_jws(token).payload["vc"]["credentialSubject"]
    assert subject == {"id": load_settings(alpha).did, "memberOf": settings.did}
    _, other = authority.issue_credential(folder, subject=load_settings(alpha).did,
                                          attributes={"memberOf": "did:web:elsewhere"})
    assert parse_jws(other).payload["vc"]["credentialSubject"]["memberOf"] == "did:web:elsewhere"


def test_indices_are_distinct(space: tuple[Path, Path]) -> None:
    folder, alpha = space
    for _ in range(20):
        authority.issue_credential(folder, subject=load_settings(alpha).did, valid_days=1)
    entries = [json.loads(line) for line in (folder / "issued.jsonl").open()]
    assert len({e["index"] for e in entries}) == 20


def test_issue_refusals(space: tuple[Path, Path]) -> None:
    folder, _ = space
    with pytest.raises(ConfigError, match="member's DID"):
        authority.issue_credential(folder, subject="alice")
    with pytest.raises(ConfigError, match="valid-days"):
        authority.issue_credential(folder, subject="did:web:a", valid_days=0)
    with pytest.raises(ConfigError, match="'id'"):
        authority.issue_credential(folder, subject="did:web:a", attributes={"id": "x"})


def test_import_credential(space: tuple[Path, Path], tmp_path: Path) -> None:
    folder, alpha = space
    _, token = authority.issue_credential(folder, subject=load_settings(alpha).did)
    (tmp_path / "vc.jwt").write_text(token + "\n")
    path = credentials.import_credential(alpha, tmp_path / "vc.jwt")
    assert path.parent == alpha / "credentials" and path.suffix == ".jwt"
    assert credentials.load_credentials(alpha) == [token]
    _, other = authority.issue_credential(folder, subject="did:web:gamma.example.org")
    (tmp_path / "other.jwt").write_text(other)
    with pytest.raises(ConfigError, match="not did:web"):
        credentials.import_credential(alpha, tmp_path / "other.jwt")
    (tmp_path / "junk.jwt").write_text("hello")
    with pytest.raises(ConfigError, match="not a VC JWT"):
        credentials.import_credential(alpha, tmp_path / "junk.jwt")
    with pytest.raises(ConfigError, match="expired"):
        credentials.import_credential(alpha, tmp_path / "vc.jwt", now=time.time() + 400 * 86_400)


def test_cli_round_trip_prints_no_key_material(
    space: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    folder, alpha = space
    assert main(["authority", "init", str(tmp_path / "auth2"), "--url", AUTHORITY_URL]) == 0
    initialised = capsys.readouterr()
    assert "initialised authority did:web:127.0.0.1%3A7443" in initialised.out
    member = load_settings(alpha).did
    out_file = tmp_path / "member.jwt"
    assert main(["authority", "issue", str(folder), "--subject", member, "--type",
                 "MembershipCredential", "--attr", "level=gold", "--valid-days", "30",
                 "--out", str(out_file)]) == 0
    issued = capsys.readouterr()
    token = issued.out.strip()
    assert out_file.read_text().strip() == token
    credential_id = issued.err.split()[-1]
    assert main(["credentials", "import", str(alpha), str(out_file)]) == 0
    assert main(["authority", "revoke", str(folder), credential_id]) == 0
    assert main(["authority", "revoke", str(folder), "urn:uuid:unknown"]) == 2
    out = capsys.readouterr()
    assert "imported" in out.out and "revoked" in out.out and "no credential" in out.err
    texts = [initialised.out, issued.out, issued.err, out.out, out.err, caplog.text]
    for where in (folder, tmp_path / "auth2", alpha):
        _assert_no_key_material(where, texts)


async def test_app_serves_did_and_status_list(space: tuple[Path, Path]) -> None:
    folder, alpha = space
    settings = authority.load_authority(folder)
    credential_id, _ = authority.issue_credential(folder, subject=load_settings(alpha).did)
    async with TestClient(TestServer(authority.authority_app(folder))) as client:
        response = await client.get("/.well-known/did.json")
        assert (await response.json())["id"] == settings.did
        response = await client.get("/status/revocation")
        assert response.headers["Cache-Control"] == f"max-age={authority.STATUS_LIST_CACHE_S}"
        first = await response.text()
        index = authority.revoke_credential(folder, credential_id)
        second = await (await client.get("/status/revocation")).text()
    ring = _ring(folder)
    args: dict[str, Any] = {"issuer": settings.did, "url": settings.status_url,
                            "now": int(time.time()), "leeway_s": 5, "resolve_key": ring.public_key}
    assert not vc.get_status(vc.verify_status_list_credential(first, **args), index)
    assert vc.get_status(vc.verify_status_list_credential(second, **args), index)


@pytest.mark.parametrize(("accept", "as_json"), [
    ("", False), ("*/*", False), ("application/vc+jwt", False),
    ("application/vc+jwt, application/vc+ld+json", False),
    ("application/vc+ld+json", True), ("application/json;q=0.9", True)])
async def test_status_list_by_accept(space: tuple[Path, Path], accept: str,
                                     as_json: bool) -> None:
    # EDC 0.14 parses the status list as JSON (make interop, DCP mode); we verify the JWT.
    folder, _ = space
    async with TestClient(TestServer(authority.authority_app(folder))) as client:
        response = await client.get("/status/revocation", headers={"Accept": accept})
        assert response.status == 200 and response.headers["Vary"] == "Accept"
        body = await response.text()
    jwt = authority.status_list_credential(folder)
    if as_json:
        assert response.content_type == "application/vc+ld+json"
        assert json.loads(body)["credentialSubject"] == parse_jws(jwt).payload["vc"][
            "credentialSubject"]
    else:
        assert response.content_type == "application/vc+jwt"
        assert parse_jws(body).payload["vc"]["credentialSubject"] == parse_jws(jwt).payload[
            "vc"]["credentialSubject"]
