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
    DATABASE,
    DID_FILE,
    FIRST_KEY_FRAGMENT,
    SIGNING_KEY,
    TLS_CERT,
    TLS_KEY,
    TOKEN_FILE,
    bind_host,
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


def write_identity(dir: Path, *, did: str, host: str, service_url: str) -> None:
    """Keys (0600 in a 0700 ``keys/``), a self-signed TLS certificate, the did:web document
    naming ``service_url``, and the ignores that keep keys and state out of git."""
    (dir / "keys").mkdir(mode=0o700)  # private files only; 0700 on top of each file's 0600
    (dir / "tls").mkdir(exist_ok=True)
    signing = keys.generate_signing_key(dir / SIGNING_KEY)
    keys.generate_tls(dir / TLS_CERT, dir / TLS_KEY, [host, "localhost", "127.0.0.1"])
    kid = f"{did}#{FIRST_KEY_FRAGMENT}"
    write_json(dir / DID_FILE, build_did_document(did, service_url, [(kid, public_jwk(signing))]))
    (dir / "trust").mkdir(exist_ok=True)
    (dir / "trust" / ".gitkeep").write_text("")
    (dir / ".gitignore").write_text("keys/\nstate/\n")


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


def init_folder(
    dir: Path, *, name: str, url: str, management_port: int | None = None
) -> None:
    """Create a participant folder at ``dir`` (absent or empty) for the public root ``url``."""
    host, port = parse_public_url(url)
    url = url.rstrip("/")
    mgmt = port + 1 if management_port is None else management_port
    if not 0 < mgmt < 65536 or mgmt == port:
        raise ConfigError(f"management port {mgmt}: must be 1-65535 and differ from {port}")
    if not name.strip():
        raise ConfigError("--name must not be empty")
    check_init_target(dir)
    did = did_web_from_url(url)
    for sub in ("policies", "datasets", "data", "state"):
        (dir / sub).mkdir(parents=True, exist_ok=True)
    (dir / CONFIG_FILE).write_text(_connector_toml(name, url, did, host, port, mgmt))
    write_identity(dir, did=did, host=host, service_url=url + DSP_PATH)
    keys.write_private(dir / TOKEN_FILE, (secrets.token_urlsafe(32) + "\n").encode())
    for template in sorted(templates_dir().glob("*.json")):
        shutil.copyfile(template, dir / "policies" / template.name)
    (dir / "datasets" / "example.toml").write_text(_EXAMPLE_DATASET)
    (dir / "data" / "example.jsonl").write_text(_example_records())

