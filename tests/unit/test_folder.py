"""folder: init writes a loadable, private, self-consistent folder; check finds file:line."""

from __future__ import annotations

import ipaddress
import json
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509

from connector.config import load_settings
from connector.core.errors import ConfigError, Problem
from connector.core.identity import KeyRing, issue_token, public_jwk, verify_token
from connector.keys import load_signing_key
from connector.participant import lint
from connector.participant.datasets import DatasetDecl, load_datasets
from connector.participant.init import init_folder, templates_dir
from connector.participant.lint import check_folder
from connector.participant.policies import load_policies
from connector.participant.trust import add_trusted_peer, load_trust

URL = "https://127.0.0.1:8443"
DID = "did:web:127.0.0.1%3A8443"
TEMPLATES = {"members-only", "purpose-research", "time-limited", "count-limited",
             "named-partners", "open-use"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "acme"
    init_folder(root, name="acme", url=URL)
    return root


@pytest.fixture
def folder(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of an initialised folder (key generation is done once per module)."""
    root = tmp_path / "acme"
    shutil.copytree(pristine, root)  # copy2 keeps the modes
    return root


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _lines(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems]


# --- init ---------------------------------------------------------------------------------------


def test_init_writes_every_file_with_its_mode(pristine: Path) -> None:
    for name in ("keys/signing-key.pem", "keys/tls-key.pem", "keys/management.token",
                 "keys/data-token.secret"):
        assert _mode(pristine / name) == 0o600, name
    # Made by init, not at the first start: a copy for a second replica shares it.
    assert len((pristine / "keys/data-token.secret").read_bytes()) == 32
    for name in ("connector.toml", "did.json", "tls/cert.pem", "datasets/example.toml",
                 "data/example.jsonl", "trust/.gitkeep", ".gitignore"):
        assert (pristine / name).is_file(), name
    assert (pristine / "state").is_dir() and not any((pristine / "state").iterdir())
    assert {p.stem for p in (pristine / "policies").glob("*.json")} == TEMPLATES
    ignored = [line for line in (pristine / ".gitignore").read_text().splitlines()
               if line and not line.startswith("#")]
    assert ignored == ["keys/", "state/", "data/"]  # `git add .` commits no data file
    records = (pristine / "data/example.jsonl").read_text().splitlines()
    assert len(records) == 10 and all(isinstance(json.loads(r), dict) for r in records)
    assert len((pristine / "keys/management.token").read_text().strip()) >= 43


def test_load_settings_accepts_the_result(pristine: Path) -> None:
    settings = load_settings(pristine)
    assert settings.name == "acme"
    assert settings.did == DID
    assert settings.public_url == URL
    assert (settings.host, settings.port, settings.management_port) == ("127.0.0.1", 8443, 8444)
    assert settings.signing_kid == f"{DID}#key-1"
    assert settings.signing_key == pristine.resolve() / "keys/signing-key.pem"
    assert settings.database == pristine.resolve() / "state/connector.db"
    assert settings.dsp_base == URL + "/dsp/2025-1"


def test_did_document_matches_the_signing_key(pristine: Path) -> None:
    doc = json.loads((pristine / "did.json").read_text())
    key = load_signing_key(pristine / "keys/signing-key.pem")
    kid = f"{DID}#key-1"
    assert doc["id"] == DID
    assert doc["verificationMethod"][0]["id"] == kid
    assert doc["verificationMethod"][0]["publicKeyJwk"] == public_jwk(key)
    assert doc["capabilityInvocation"] == [kid]
    assert doc["service"][0]["serviceEndpoint"] == URL + "/dsp/2025-1"
    # The document's key verifies a token the folder's key signs.
    ring = KeyRing({kid: doc["verificationMethod"][0]["publicKeyJwk"]})
    token = issue_token(key, kid=kid, issuer=DID, audience="did:web:b", now=100, jti="j", ttl_s=60)
    assert verify_token(token, audience="did:web:b", now=110, leeway_s=0, keys=ring).issuer == DID


def test_tls_certificate_sans_and_ca(pristine: Path) -> None:
    cert = x509.load_pem_x509_certificate((pristine / "tls/cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_init_with_a_dns_name_and_management_port(tmp_path: Path) -> None:
    root = tmp_path / "beta"
    init_folder(root, name="beta \"quoted\"", url="https://Beta.Example.org:9443/",
                management_port=9000)
    settings = load_settings(root)
    assert settings.name == 'beta "quoted"'
    assert settings.did == "did:web:beta.example.org%3A9443"
    assert settings.public_url == "https://beta.example.org:9443"  # one server, one URL
    assert settings.management_port == 9000
    cert = x509.load_pem_x509_certificate((root / "tls/cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["beta.example.org", "localhost"]
    assert check_folder(root) == []


def test_init_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "README").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty directory"):
        init_folder(tmp_path / "x", name="acme", url=URL)
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["README"]


def test_init_into_an_existing_empty_dir(tmp_path: Path) -> None:
    init_folder(tmp_path, name="acme", url=URL)
    assert load_settings(tmp_path).did == DID


@pytest.mark.parametrize("url", ["http://127.0.0.1:8443", "https://127.0.0.1:8443/dsp",
                                 "127.0.0.1:8443", "https://127.0.0.1:99999", "https://:8443",
                                 "https://127.0.0.1:0"])
def test_init_refuses_a_bad_url(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"--url '.*': must be https://HOST or https://HOST:"):
        init_folder(tmp_path / "x", name="acme", url=url)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("url", ["https://connector.acme.example",
                                 "https://connector.acme.example:443/"])
def test_a_url_without_a_port_means_443(tmp_path: Path, url: str) -> None:
    init_folder(tmp_path / "x", name="acme", url=url)
    settings = load_settings(tmp_path / "x")
    assert settings.public_url == "https://connector.acme.example"
    assert settings.did == "did:web:connector.acme.example"
    assert (settings.port, settings.management_port) == (443, 444)
    assert check_folder(tmp_path / "x") == []


def test_templates_dir_holds_every_template() -> None:
    assert {p.stem for p in templates_dir().glob("*.json")} == TEMPLATES


# --- datasets and policies -----------------------------------------------------------------------


def test_load_datasets_of_a_fresh_folder(folder: Path) -> None:
    (decl,) = load_datasets(folder)
    assert decl == DatasetDecl(
        id="example-weather", title=decl.title, description=decl.description,
        keywords=("weather", "example"), policies=("members-only",), format="HttpData-PULL",
        source_type="jsonl", source_path=(folder / "data/example.jsonl").resolve())


def test_load_datasets_sorted_defaults_and_duplicates(folder: Path) -> None:
    (folder / "datasets/a.toml").write_text(
        'id = "aaa"\ntitle = "A"\npolicies = ["open-use"]\n'
        '[source]\ntype = "csv"\npath = "/abs/a.csv"\n')
    decls = load_datasets(folder)
    assert [d.id for d in decls] == ["aaa", "example-weather"]
    assert decls[0].format == "HttpData-PULL" and decls[0].keywords == ()
    assert decls[0].source_path == Path("/abs/a.csv")
    (folder / "datasets/b.toml").write_text((folder / "datasets/a.toml").read_text())
    with pytest.raises(ConfigError, match=r"b\.toml: key 'id': dataset id 'aaa' is declared twice"):
        load_datasets(folder)


def test_load_datasets_names_file_and_key(folder: Path) -> None:
    (folder / "datasets/example.toml").write_text('id = "x"\ntitle = "X"\npolicies = []\n')
    with pytest.raises(ConfigError, match=r"example\.toml: key 'policies'"):
        load_datasets(folder)


def test_load_policies(folder: Path) -> None:
    policies = load_policies(folder)
    assert set(policies) == TEMPLATES
    assert policies["members-only"]["permission"][0]["constraint"][0]["leftOperand"] == "membership"
    (folder / "policies/bad.json").write_text('{\n  "a": 1,\n}\n')
    with pytest.raises(ConfigError, match=r"bad\.json:3: invalid JSON"):
        load_policies(folder)


def test_every_template_describes_itself_and_has_no_id_or_target() -> None:
    for path in templates_dir().glob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["@context"] == ["https://w3id.org/dspace/2025/1/context.jsonld"], path
        assert doc["@type"] == "Offer", path
        assert isinstance(doc["description"], str) and len(doc["description"]) > 20, path
        assert "@id" not in doc and "target" not in doc, path
        assert doc["permission"][0]["action"] == "use", path


# --- trust -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("peer") / "beta"
    init_folder(root, name="beta", url="https://beta.example.org:9443")
    return root


def test_trust_add_from_a_folder_round_trips(folder: Path, peer_folder: Path) -> None:
    path = add_trusted_peer(folder, peer_folder,
                            attributes={"membership": "active", "purpose": "research,ai"},
                            tls_cert=None)
    assert path == folder / "trust" / "beta.example.org-9443.json"
    peers = load_trust(folder)
    peer = peers["did:web:beta.example.org%3A9443"]
    doc = json.loads((peer_folder / "did.json").read_text())
    kid = "did:web:beta.example.org%3A9443#key-1"
    assert peer.url == "https://beta.example.org:9443"
    assert dict(peer.keys) == {kid: doc["verificationMethod"][0]["publicKeyJwk"]}
    assert peer.tls_cert_pem == (peer_folder / "tls/cert.pem").read_text()
    assert dict(peer.attributes) == {"membership": "active", "purpose": "research,ai"}
    assert check_folder(folder) == []
    # Pinning again (a key rotation) keeps the attributes unless told to replace them.
    add_trusted_peer(folder, peer_folder, attributes={}, tls_cert=None)
    assert dict(load_trust(folder)["did:web:beta.example.org%3A9443"].attributes) == {
        "membership": "active", "purpose": "research,ai"}
    add_trusted_peer(folder, peer_folder, attributes={}, tls_cert=None, replace_attributes=True)
    assert dict(load_trust(folder)["did:web:beta.example.org%3A9443"].attributes) == {}


def test_trust_add_from_a_did_json(folder: Path, peer_folder: Path) -> None:
    with pytest.raises(ConfigError, match="no TLS certificate"):
        add_trusted_peer(folder, peer_folder / "did.json", attributes={}, tls_cert=None)
    path = add_trusted_peer(folder, peer_folder / "did.json", attributes={}, tls_cert=None,
                            system_ca=True)
    peer = load_trust(folder)["did:web:beta.example.org%3A9443"]
    assert path.name == "beta.example.org-9443.json"
    assert peer.url == "https://beta.example.org:9443"
    assert peer.tls_cert_pem is None
    add_trusted_peer(folder, peer_folder / "did.json", attributes={},
                     tls_cert=peer_folder / "tls/cert.pem")
    assert load_trust(folder)["did:web:beta.example.org%3A9443"].tls_cert_pem


def test_trust_add_refuses_a_bad_certificate(folder: Path, peer_folder: Path) -> None:
    (folder / "junk.pem").write_text("junk")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        add_trusted_peer(folder, peer_folder, attributes={}, tls_cert=folder / "junk.pem")


def test_load_trust_refuses_a_key_of_another_did(folder: Path) -> None:
    (folder / "trust/evil.json").write_text(json.dumps({
        "did": "did:web:evil", "url": "https://evil:1",
        "keys": [{"kid": "did:web:good#key-1", "jwk": {"kty": "OKP", "crv": "Ed25519",
                                                      "x": "A" * 43}}]}))
    with pytest.raises(ConfigError, match=r"evil\.json: key id 'did:web:good#key-1' is not under"):
        load_trust(folder)


# --- check -------------------------------------------------------------------------------------


def test_check_is_clean_on_a_fresh_folder(folder: Path) -> None:
    assert check_folder(folder) == []


def test_check_reports_a_broken_dataset_toml(folder: Path) -> None:
    (folder / "datasets/broken.toml").write_text('id = "b"\ntitle = "B"\npolicies = [\n= oops\n')
    (problem,) = check_folder(folder)
    assert problem.file == str(folder / "datasets/broken.toml")
    assert problem.line == 4
    assert problem.message.startswith("invalid TOML")
    assert str(problem).startswith(f"{folder / 'datasets/broken.toml'}:4: invalid TOML")


def test_check_reports_a_missing_policy_at_its_line(folder: Path) -> None:
    text = (folder / "datasets/example.toml").read_text()
    (folder / "datasets/example.toml").write_text(text.replace('"members-only"', '"nope"'))
    (problem,) = check_folder(folder)
    assert problem.file == str(folder / "datasets/example.toml")
    assert problem.line == 5
    assert "policy 'nope' has no file policies/nope.json" in problem.message


def test_check_reports_dataset_keys_at_their_lines(folder: Path) -> None:
    (folder / "datasets/x.toml").write_text(
        'id = "x"\ntitle = 3\npolicies = ["open-use"]\n\n[source]\ntype = "xml"\npath = "x"\n')
    assert _lines(check_folder(folder)) == [
        f"{folder / 'datasets/x.toml'}:2: key 'title' must be a non-empty string",
        f"{folder / 'datasets/x.toml'}:6: [source] key 'type' must be one of "
        "('csv', 'jsonl', 'sqlite', 'postgres', 'http')",
    ]


def test_check_reports_a_duplicate_dataset_and_a_missing_source(folder: Path) -> None:
    text = (folder / "datasets/example.toml").read_text()
    (folder / "datasets/zz.toml").write_text(text.replace("data/example.jsonl", "data/no.csv"))
    lines = _lines(check_folder(folder))
    assert lines[0] == (f"{folder / 'datasets/zz.toml'}:1: dataset id 'example-weather' "
                        f"is also declared in {folder / 'datasets/example.toml'}")
    assert lines[1].startswith(f"{folder / 'datasets/zz.toml'}:10: no source file")


def test_check_reports_a_policy_with_invalid_json(folder: Path) -> None:
    (folder / "policies/broken.json").write_text('{\n  "@type": "Offer",\n  "permission": [\n}\n')
    problems = [p for p in check_folder(folder) if p.file.endswith("broken.json")]
    assert problems and problems[0].line == 4
    assert problems[0].file == str(folder / "policies/broken.json")


def test_check_reports_a_key_readable_by_others(folder: Path) -> None:
    (folder / "keys/signing-key.pem").chmod(0o644)
    (problem,) = check_folder(folder)
    assert problem.file == str(folder / "keys/signing-key.pem")
    assert problem.line == 1
    assert "mode 0644 allows group/other access" in problem.message


def test_check_reports_a_missing_key_at_its_config_line(folder: Path) -> None:
    (folder / "keys/tls-key.pem").unlink()
    (problem,) = check_folder(folder)
    assert problem.file == str(folder / "connector.toml")
    assert problem.line == 10
    assert problem.message.startswith("server.tls_key: no file")


def test_check_reports_connector_toml_errors(folder: Path) -> None:
    text = (folder / "connector.toml").read_text()
    (folder / "connector.toml").write_text(text.replace("port = 8443", 'port = "8443"'))
    (problem,) = check_folder(folder)
    assert (problem.file, problem.line) == (str(folder / "connector.toml"), 8)
    assert problem.message == "[server]: key 'port' must be int"
    (folder / "connector.toml").write_text(text.replace("[server]", "[server"))
    (problem,) = check_folder(folder)
    assert (problem.line, problem.message[:12]) == (6, "invalid TOML")


def test_check_reports_a_did_document_without_the_signing_key(folder: Path) -> None:
    doc = json.loads((folder / "did.json").read_text())
    doc["verificationMethod"][0]["id"] = f"{DID}#key-9"
    (folder / "did.json").write_text(json.dumps(doc, indent=2))
    (problem,) = check_folder(folder)
    assert problem.file == str(folder / "did.json")
    assert problem.line == 7  # "verificationMethod"
    assert problem.message == f"does not list the signing key {DID}#key-1"


def test_check_reports_a_did_document_with_another_key(folder: Path, peer_folder: Path) -> None:
    shutil.copyfile(peer_folder / "did.json", folder / "did.json")
    (problem,) = check_folder(folder)
    assert problem.message == f"id must be the participant DID {DID}"


def test_check_reports_trust_files(folder: Path) -> None:
    (folder / "trust/a.json").write_text('{"did": "did:web:a",\n "url": "https://a:1"\n}\n')
    (folder / "trust/b.json").write_text("{nope")
    assert _lines(check_folder(folder)) == [
        f"{folder / 'trust/a.json'}:1: key 'keys' must be a non-empty list of {{kid, jwk}}",
        f"{folder / 'trust/b.json'}:1: invalid JSON: Expecting property name enclosed in "
        "double quotes (column 2)",
    ]


def test_check_a_missing_folder(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    assert _lines(check_folder(absent)) == [f"{absent}:1: not a directory"]


def test_check_delegates_policies_to_the_policy_checker(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def check_policy_document(text: str, file: str) -> list[Problem]:
        seen.append(Path(file).name)
        return [Problem(file, 2, "fake finding")] if "count" in file else []

    monkeypatch.setattr(lint, "check_policy_document", check_policy_document)
    assert _lines(check_folder(folder)) == [
        f"{folder / 'policies/count-limited.json'}:2: fake finding"]
    assert sorted(seen) == sorted(f"{name}.json" for name in TEMPLATES)


def test_check_points_at_the_missing_policy_in_a_wrapped_list(folder: Path) -> None:
    (folder / "datasets/x.toml").write_text(
        'id = "x"\ntitle = "X"\npolicies = [\n  "open-use",\n  "gone",\n]\n'
        '[source]\ntype = "csv"\npath = "/abs/x.csv"\n')
    assert _lines(check_folder(folder)) == [
        f"{folder / 'datasets/x.toml'}:5: policy 'gone' has no file policies/gone.json"]


def test_check_compares_a_p256_signing_key_with_the_did_document(folder: Path) -> None:
    from connector.core.identity import signing_public_jwk
    from connector.keys import generate_ec_signing_key

    key_path = load_settings(folder).signing_key
    key_path.unlink()
    key = generate_ec_signing_key(key_path)
    (problem,) = check_folder(folder)  # did.json still holds the Ed25519 key
    assert problem.message == f"publicKeyJwk does not match the private key {key_path}"
    doc = json.loads((folder / "did.json").read_text())
    doc["verificationMethod"][0]["publicKeyJwk"] = signing_public_jwk(key)
    (folder / "did.json").write_text(json.dumps(doc, indent=2))
    assert check_folder(folder) == []
