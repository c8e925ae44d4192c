"""``connector init``: a new participant folder, with keys, a did:web document, the policy
templates and an example dataset."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import connector
from connector import keys
from connector.config import CONFIG_FILE
from connector.core.binding import DSP_PATH
from connector.core.errors import ConfigError
from connector.core.identity import build_did_document, did_web_from_url, public_jwk
from connector.participant.layout import (
    DATA_TOKEN_SECRET,
    DATABASE,
    DID_FILE,
    FIRST_KEY_FRAGMENT,
    SIGNING_KEY,
    TLS_CERT,
    TLS_KEY,
    TOKEN_FILE,
    bind_host,
    canonical_url,
    check_init_target,
    parse_public_url,
    toml_str,
    write_json,
)

_EXAMPLE_DATASET = """\
id = "example-weather"
title = "Example weather observations"
description = "Ten hourly temperature and wind readings from one example station."
keywords = ["weather", "example"]
policies = ["members-only"]      # names of files in policies/ without .json; one offer each
format = "HttpData-PULL"

[source]
type = "jsonl"
path = "data/example.jsonl"
"""


GITIGNORE = """\
# Private keys and the database never leave this machine.
keys/
state/
# The records themselves stay out of git too: a partner gets them through a transfer, never
# from this repository. To commit a small sample on purpose: git add -f data/sample.jsonl
data/
"""


def owner_toml(table: str, name: str, did: str, url: str) -> str:
    """The table naming a daemon folder's owner (``[participant]``, ``[registry]``)."""
    return f"[{table}]\nname = {toml_str(name)}\ndid = {toml_str(did)}\nurl = {toml_str(url)}\n"


def endpoint_toml(did: str, host: str, port: int) -> str:
    """The ``[server]`` and ``[signing]`` tables every daemon folder has (connector, registry)."""
    return f"""\
[server]
host = {toml_str(bind_host(host))}
port = {port}
tls_cert = "{TLS_CERT}"
tls_key = "{TLS_KEY}"

[signing]
key = "{SIGNING_KEY}"
kid = {toml_str(f"{did}#{FIRST_KEY_FRAGMENT}")}
"""


def write_identity(dir: Path, *, did: str, host: str, service_url: str,
                   tls: tuple[bytes, bytes] | None = None) -> None:
    """Keys (0600 in a 0700 ``keys/``), a TLS certificate (self-signed, or the PEM
    certificate and key ``tls`` a CA issued), the did:web document naming ``service_url``,
    and the ignores that keep keys, state and data out of git."""
    (dir / "keys").mkdir(mode=0o700)  # private files only; 0700 on top of each file's 0600
    (dir / "tls").mkdir(exist_ok=True)
    signing = keys.generate_signing_key(dir / SIGNING_KEY)
    if tls is None:
        keys.generate_tls(dir / TLS_CERT, dir / TLS_KEY, [host, "localhost", "127.0.0.1"])
    else:
        (dir / TLS_CERT).write_bytes(tls[0])
        keys.write_private(dir / TLS_KEY, tls[1])
    kid = f"{did}#{FIRST_KEY_FRAGMENT}"
    write_json(dir / DID_FILE, build_did_document(did, service_url, [(kid, public_jwk(signing))]))
    (dir / "trust").mkdir(exist_ok=True)
    (dir / "trust" / ".gitkeep").write_text("")
    (dir / ".gitignore").write_text(GITIGNORE)


def _connector_toml(name: str, url: str, did: str, host: str, port: int, mgmt: int) -> str:
    return f"""\
{owner_toml("participant", name, did, url)}
{endpoint_toml(did, host, port)}
[management]
port = {mgmt}            # listens on 127.0.0.1 only
token_file = "{TOKEN_FILE}"

[storage]
sqlite = "{DATABASE}"
"""


def _example_records() -> str:
    records = [
        {"station": "example-1", "hour": h, "temperature_c": round(11.5 + 0.7 * h, 1),
         "wind_kmh": 8 + (h * 3) % 11}
        for h in range(10)
    ]
    return "".join(json.dumps(r) + "\n" for r in records)


def templates_dir() -> Path:
    """The policy templates: packaged in the wheel, else the repository's ``policies/``."""
    packaged = Path(connector.__file__).parent / "_templates" / "policies"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "policies"


def read_ca_certificate(cert_path: Path, key_path: Path, host: str) -> tuple[bytes, bytes]:
    """The PEM certificate (with its chain) and private key a CA issued for ``host``;
    ConfigError unless the key is the certificate's and the certificate names ``host``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{exc.filename}: cannot read: {exc.strerror}") from exc
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError as exc:
        raise ConfigError(f"{cert_path}: not a PEM certificate") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key_path}: not an unencrypted PEM private key") from exc
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, spki) != \
            cert.public_key().public_bytes(serialization.Encoding.PEM, spki):
        raise ConfigError(f"{key_path}: not the key of the certificate {cert_path}")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [n.lower() for n in names.get_values_for_type(x509.DNSName)]
        ips = [str(a) for a in names.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    wildcard = "*." + host.split(".", 1)[-1]
    if host not in dns and wildcard not in dns and host not in ips:
        raise ConfigError(f"{cert_path}: the certificate does not name {host} "
                          f"(it names {', '.join(dns + ips) or 'no host'})")
    return cert_pem, key_pem


def init_folder(
    dir: Path, *, name: str, url: str, management_port: int | None = None,
    tls: tuple[Path, Path] | None = None,
) -> None:
    """Create a participant folder at ``dir`` (absent or empty) for the public root ``url``
    (no port: 443). ``tls``: a certificate and key from a CA, used instead of a self-signed
    pair."""
    host, port = parse_public_url(url)
    url = canonical_url(url)
    mgmt = port + 1 if management_port is None else management_port
    if not 0 < mgmt < 65536 or mgmt == port:
        raise ConfigError(f"management port {mgmt}: must be 1-65535 and differ from {port}")
    if not name.strip():
        raise ConfigError("--name must not be empty")
    check_init_target(dir)
    ca = read_ca_certificate(tls[0], tls[1], host) if tls is not None else None
    did = did_web_from_url(url)
    for sub in ("policies", "datasets", "data", "state"):
        (dir / sub).mkdir(parents=True, exist_ok=True)
    (dir / CONFIG_FILE).write_text(_connector_toml(name, url, did, host, port, mgmt))
    write_identity(dir, did=did, host=host, service_url=url + DSP_PATH, tls=ca)
    keys.write_private(dir / TOKEN_FILE, (secrets.token_urlsafe(32) + "\n").encode())
    # Made here rather than at the first start, so a copy of the folder for a second replica
    # holds the same secret (docs/storage.md).
    keys.write_private(dir / DATA_TOKEN_SECRET, secrets.token_bytes(32))
    for template in sorted(templates_dir().glob("*.json")):
        shutil.copyfile(template, dir / "policies" / template.name)
    (dir / "datasets" / "example.toml").write_text(_EXAMPLE_DATASET)
    (dir / "data" / "example.jsonl").write_text(_example_records())



def next_steps(dir: Path, *, public_ca: bool) -> list[str]:
    """What ``connector init`` prints after creating ``dir``: where it listens, which files
    go to a partner and which come back (docs/onboarding.md tells the same)."""
    from connector.config import load_settings

    settings = load_settings(dir)
    send = "did.json" if public_ca else f"did.json and {TLS_CERT}"
    pin = "--system-ca" if public_ca else "--tls-cert THEIR-cert.pem"
    return [
        f"initialised {dir} as {settings.did}",
        f"  DSP and data plane: {settings.public_url} (listening on "
        f"{settings.host}:{settings.port})",
        f"  management API:     {settings.management_url} (127.0.0.1 only; token in "
        f"{TOKEN_FILE}; [management] port in {CONFIG_FILE})",
        "next steps:",
        f"  1. keep the folder in git: cd {dir} && git init && git add . && git commit -m "
        "'our connector'   (.gitignore keeps keys/, state/ and data/ out)",
        f"  2. send each partner your public files: {send}",
        "  3. receive theirs (their did.json, and their tls/cert.pem unless a public CA "
        "signed it) and pin them:",
        f"     connector trust add THEIR-did.json {pin} --attr membership=active --dir {dir}",
        f"  4. connector policy check --dir {dir} && connector run --dir {dir}",
        "  docs/onboarding.md walks through it; docs/troubleshooting.md explains refusals",
    ]
