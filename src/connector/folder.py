"""The participant folder: create it, read its datasets, policies and pinned peers, check it.

This is an IO shell around ``config``, ``keys`` and the pure ``core.identity``. Layout
(see DESIGN.md "The participant folder")::

    connector.toml  did.json  policies/*.json  datasets/*.toml  data/  trust/*.json
    keys/ (0600, git-ignored)  tls/cert.pem  state/ (git-ignored)

Every error names the file (and the key where there is one). ``check_folder`` collects
problems as ``file:line: message`` for a pre-commit hook or CI, instead of stopping at the first.
The module is longer than most because it holds the loaders and their checks side by side.
"""

from __future__ import annotations

import hashlib
import importlib
import ipaddress
import json
import re
import secrets
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec

import connector
from connector import keys
from connector.config import CONFIG_FILE, load_settings
from connector.core.binding import DSP_PATH
from connector.core.errors import ConfigError, PolicyError, Problem
from connector.core.identity import (
    DSP_SERVICE_TYPE,
    KeyRing,
    build_did_document,
    did_web_from_url,
    public_jwk,
    signing_public_jwk,
)

DID_FILE = "did.json"
DEFAULT_FORMAT = "HttpData-PULL"
SOURCE_TYPES = ("csv", "jsonl", "sqlite", "postgres", "http")
FORMATS = ("HttpData-PULL", "HttpData-PUSH")
UPSTREAM_FORMATS = ("jsonl", "csv")
# Keys that would put a credential in a declaration: credentials go in a secret file, named
# by reference (``token_file``, ``dsn_file``), never inline in a reviewed, committed file.
SECRET_KEYS = ("token", "password", "passwd", "secret", "api_key", "apikey", "dsn",
               "authorization", "bearer", "credentials")
# A password in a URL's user part (scheme://user:password@host), e.g. a PostgreSQL DSN.
_URL_PASSWORD = re.compile(r"://[^/@\s]*:[^/@\s]*@")
SIGNING_KEY = "keys/signing-key.pem"
TLS_KEY = "keys/tls-key.pem"
TLS_CERT = "tls/cert.pem"
TOKEN_FILE = "keys/management.token"
DATABASE = "state/connector.db"
# The key fragment of the first signing key; a rotation adds key-2 next to it.
FIRST_KEY_FRAGMENT = "key-1"

# --- small helpers -----------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    return json.dumps(value, ensure_ascii=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _rel(root: Path, name: str) -> str:
    """How a file is named in problems and errors: the folder as given, then the file."""
    return str(root / name)


def parse_public_url(url: str) -> tuple[str, int]:
    """Host and port of ``https://HOST:PORT`` (an optional trailing ``/``); else ConfigError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--url {url!r}: must be https://HOST:PORT ({exc})") from exc
    bad_path = parts.path not in ("", "/")
    if parts.scheme != "https" or not parts.hostname or not port or bad_path:
        raise ConfigError(f"--url {url!r}: must be https://HOST:PORT")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"--url {url!r}: must be https://HOST:PORT")
    return parts.hostname.lower(), port


def _bind_host(host: str) -> str:
    """Where the server listens: loopback stays loopback, an IP is bound as is, a name on all."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "0.0.0.0"


# --- init ----------------------------------------------------------------------------------------

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


def endpoint_toml(did: str, host: str, port: int) -> str:
    """The ``[server]`` and ``[signing]`` tables every daemon folder has (connector, registry)."""
    return f"""\
[server]
host = {_toml_str(_bind_host(host))}
port = {port}
tls_cert = "{TLS_CERT}"
tls_key = "{TLS_KEY}"

[signing]
key = "{SIGNING_KEY}"
kid = {_toml_str(f"{did}#{FIRST_KEY_FRAGMENT}")}
"""


def write_identity(dir: Path, *, did: str, host: str, service_url: str) -> None:
    """Keys (0600 in a 0700 ``keys/``), a self-signed TLS certificate, the did:web document
    naming ``service_url``, and the ignores that keep keys and state out of git."""
    (dir / "keys").mkdir(mode=0o700)  # private files only; 0700 on top of each file's 0600
    (dir / "tls").mkdir(exist_ok=True)
    signing = keys.generate_signing_key(dir / SIGNING_KEY)
    keys.generate_tls(dir / TLS_CERT, dir / TLS_KEY, [host, "localhost", "127.0.0.1"])
    kid = f"{did}#{FIRST_KEY_FRAGMENT}"
    _write_json(dir / DID_FILE, build_did_document(did, service_url, [(kid, public_jwk(signing))]))
    (dir / "trust").mkdir(exist_ok=True)
    (dir / "trust" / ".gitkeep").write_text("")
    (dir / ".gitignore").write_text("keys/\nstate/\n")


def _connector_toml(name: str, url: str, did: str, host: str, port: int, mgmt: int) -> str:
    return f"""\
[participant]
name = {_toml_str(name)}
did = {_toml_str(did)}
url = {_toml_str(url)}

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
    return Path(__file__).resolve().parents[2] / "policies"


def _check_init_target(root: Path) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root}: exists and is not an empty directory")


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
    _check_init_target(dir)
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


# --- datasets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetDecl:
    """One ``datasets/*.toml``: a dataset, where its records live and the policies it offers."""

    id: str
    title: str
    description: str
    keywords: tuple[str, ...]
    policies: tuple[str, ...]
    format: str
    source_type: str
    source_path: Path | None
    source_query: str = ""  # sqlite, postgres: the SELECT whose rows are the records
    source_url: str = ""  # http: the upstream
    source_format: str = "jsonl"  # http: what the upstream serves, "jsonl" or "csv"
    source_token_file: Path | None = None  # http: a secret file holding the bearer token
    source_dsn_file: Path | None = None  # postgres: a secret file holding the libpq DSN
    formats: tuple[str, ...] = ()  # declared `formats`; empty: just `format`

    @property
    def offered_formats(self) -> tuple[str, ...]:
        """The transfer formats offered: ``formats`` if declared, else ``format``."""
        return self.formats or (self.format,)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _dataset_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for every structural problem of a parsed dataset declaration."""
    found: list[tuple[str, str]] = []
    for key in ("id", "title"):
        if not isinstance(data.get(key), str) or not data[key]:
            found.append((key, f"key '{key}' must be a non-empty string"))
    for key in ("description", "format"):
        if key in data and not isinstance(data[key], str):
            found.append((key, f"key '{key}' must be a string"))
    if "keywords" in data and not _is_str_list(data["keywords"]):
        found.append(("keywords", "key 'keywords' must be a list of strings"))
    if not _is_str_list(data.get("policies")) or not data["policies"]:
        found.append(("policies", "key 'policies' must be a non-empty list of policy names"))
    if "formats" in data and (not _is_str_list(data["formats"]) or not data["formats"]
                              or any(f not in FORMATS for f in data["formats"])):
        found.append(("formats", f"key 'formats' must be a non-empty list of {FORMATS}"))
    source = data.get("source")
    if not isinstance(source, dict):
        return [*found, ("source", "table [source] with 'type' and 'path' is required")]
    return found + _source_problems(source)


def _source_problems(source: Mapping[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for key, value in source.items():
        userinfo = isinstance(value, str) and _URL_PASSWORD.search(value)
        if key.lower() in SECRET_KEYS or userinfo:
            found.append((f"source.{key}", f"[source] key '{key}' puts a credential inline: "
                          "name a secret file instead (e.g. token_file = \"keys/up.token\")"))
    kind = source.get("type")
    if kind not in SOURCE_TYPES:
        found.append(("source.type", f"[source] key 'type' must be one of {SOURCE_TYPES}"))
        return found

    def need(key: str) -> bool:
        ok = isinstance(source.get(key), str) and bool(source[key].strip())
        if not ok:
            found.append((f"source.{key}", f"[source] key '{key}' must be a non-empty string"
                          f" for type '{kind}'"))
        return ok

    if kind in ("csv", "jsonl", "sqlite"):
        need("path")
    if kind == "postgres":
        need("dsn_file")
    if kind in ("sqlite", "postgres") and need("query"):
        first = source["query"].split(None, 1)[0].lower()
        if first not in ("select", "with"):
            found.append(("source.query", "[source] key 'query' must be a SELECT"))
    if kind == "http":
        if need("url") and not source["url"].startswith(("https://", "http://")):
            found.append(("source.url", "[source] key 'url' must be an http(s) URL"))
        if source.get("format", "jsonl") not in UPSTREAM_FORMATS:
            found.append(("source.format", f"[source] key 'format' must be one of "
                          f"{UPSTREAM_FORMATS}"))
        if "token_file" in source:
            need("token_file")
    return found


def _dataset_decl(data: Mapping[str, Any], root: Path) -> DatasetDecl:
    source = data["source"]
    formats = tuple(data.get("formats", ()))
    path, token_file = source.get("path"), source.get("token_file")
    dsn_file = source.get("dsn_file")
    return DatasetDecl(
        id=data["id"],
        title=data["title"],
        description=data.get("description", ""),
        keywords=tuple(data.get("keywords", ())),
        policies=tuple(data["policies"]),
        format=data.get("format", formats[0] if formats else DEFAULT_FORMAT),
        source_type=source["type"],
        source_path=(root / path).resolve() if path else None,
        source_query=source.get("query", ""),
        source_url=source.get("url", ""),
        source_format=source.get("format", "jsonl"),
        source_token_file=(root / token_file).resolve() if token_file else None,
        source_dsn_file=(root / dsn_file).resolve() if dsn_file else None,
        formats=formats,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_datasets(dir: Path) -> list[DatasetDecl]:
    """All ``datasets/*.toml`` of the folder, sorted by id; ConfigError names file and key."""
    decls: dict[str, DatasetDecl] = {}
    for path in sorted((dir / "datasets").glob("*.toml")):
        data = _read_toml(path)
        problems = _dataset_problems(data)
        if problems:
            raise ConfigError(f"{path}: {problems[0][1]}")
        decl = _dataset_decl(data, dir.resolve())
        if decl.id in decls:
            raise ConfigError(f"{path}: key 'id': dataset id {decl.id!r} is declared twice")
        decls[decl.id] = decl
    return [decls[k] for k in sorted(decls)]


# --- policies ------------------------------------------------------------------------------------


POLICY_SUFFIXES = (".json", ".yaml", ".yml")


def _policy_files(dir: Path) -> list[Path]:
    return sorted(p for p in (dir / "policies").glob("*") if p.suffix in POLICY_SUFFIXES)


def load_policies(dir: Path) -> dict[str, dict[str, Any]]:
    """Policy name (file stem) -> ODRL JSON, for every ``policies/*.json`` and ``*.yaml``.

    The compact YAML form compiles to the same ODRL JSON (``core.policy.compact``).
    """
    from connector.core.policy.compact import compile_yaml

    policies: dict[str, dict[str, Any]] = {}
    for path in _policy_files(dir):
        if path.stem in policies:
            raise ConfigError(f"{path}: a policy named {path.stem!r} already exists")
        try:
            text = path.read_text()
            document = (json.loads(text) if path.suffix == ".json"
                        else compile_yaml(text, str(path)))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        except PolicyError as exc:
            raise ConfigError(exc.message) from exc
        if not isinstance(document, dict):
            raise ConfigError(f"{path}: a policy must be a JSON object")
        policies[path.stem] = document
    return policies


def policy_hash(document: Mapping[str, Any]) -> str:
    """SHA-256 of a policy's canonical JSON (sorted keys): the same rules, the same hash,
    whether written as JSON or YAML."""
    return hashlib.sha256(msgspec.json.encode(document, order="sorted")).hexdigest()


def policy_commits(dir: Path) -> dict[str, str]:
    """Policy name -> the folder's last git commit of its file (``+modified`` when the file
    differs from it). Empty when the folder is not a git repository or git is missing."""
    commits: dict[str, str] = {}
    for path in _policy_files(dir):
        rel = str(path.relative_to(dir))
        try:
            head = subprocess.run(["git", "-C", str(dir), "log", "-1", "--format=%H", "--", rel],
                                  capture_output=True, text=True, timeout=10)
            dirty = subprocess.run(["git", "-C", str(dir), "status", "--porcelain", "--", rel],
                                   capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        if head.returncode != 0:
            return {}
        commit = head.stdout.strip()
        if commit:
            commits[path.stem] = commit + ("+modified" if dirty.stdout.strip() else "")
    return commits


# --- pinned trust --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A pinned peer from ``trust/<slug>.json`` (identity-policy note §1.12)."""

    did: str
    url: str
    keys: Mapping[str, dict[str, Any]]  # absolute kid -> public JWK
    tls_cert_pem: str | None
    attributes: Mapping[str, Any]
    # A peer whose DSP base is not <url>/dsp/2025-1 (another implementation, e.g. EDC's
    # <host>/protocol/2025-1) names it here; found under /.well-known/dspace-version.
    dsp_base: str | None = None


def _peer_problems(data: Any) -> list[tuple[str, str]]:
    """(key, message) for every structural problem of a parsed trust file."""
    if not isinstance(data, dict):
        return [("did", "a trust file must be a JSON object")]
    found: list[tuple[str, str]] = []
    did = data.get("did")
    if not isinstance(did, str) or not did.startswith("did:"):
        found.append(("did", "key 'did' must be a DID string"))
    if not isinstance(data.get("url"), str) or not data["url"].startswith("https://"):
        found.append(("url", "key 'url' must be an https URL"))
    entries = data.get("keys")
    if not isinstance(entries, list) or not entries:
        found.append(("keys", "key 'keys' must be a non-empty list of {kid, jwk}"))
        entries = []
    for entry in entries:
        ok = isinstance(entry, dict) and isinstance(entry.get("kid"), str)
        if not ok or not isinstance(entry.get("jwk"), dict):
            found.append(("keys", "each entry of 'keys' needs a string 'kid' and an object 'jwk'"))
        elif isinstance(did, str) and not entry["kid"].startswith(did + "#"):
            # A pinned key may only vouch for its own DID (the verifier relies on it).
            found.append(("kid", f"key id {entry['kid']!r} is not under {did!r}"))
    if data.get("tls_cert") is not None and not isinstance(data["tls_cert"], str):
        found.append(("tls_cert", "key 'tls_cert' must be a PEM string or null"))
    if not isinstance(data.get("attributes", {}), dict):
        found.append(("attributes", "key 'attributes' must be an object"))
    return found


def _peer(data: dict[str, Any]) -> Peer:
    peer_keys = {e["kid"]: dict(e["jwk"]) for e in data["keys"]}
    KeyRing(peer_keys)  # converts every JWK once: a bad key is a config error, now
    return Peer(
        did=data["did"],
        url=data["url"].rstrip("/"),
        keys=MappingProxyType(peer_keys),
        tls_cert_pem=data.get("tls_cert"),
        attributes=MappingProxyType(dict(data.get("attributes", {}))),
        dsp_base=data["dsp_base"].rstrip("/") if data.get("dsp_base") else None,
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc


def load_trust(dir: Path) -> dict[str, Peer]:
    """The pinned peers of ``trust/*.json``, keyed by DID; ConfigError names file and key."""
    peers: dict[str, Peer] = {}
    for path in sorted((dir / "trust").glob("*.json")):
        data = _read_json(path)
        problems = _peer_problems(data)
        if problems:
            raise ConfigError(f"{path}: {problems[0][1]}")
        try:
            peer = _peer(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.message}") from exc
        if peer.did in peers:
            raise ConfigError(f"{path}: key 'did': {peer.did} is pinned twice")
        peers[peer.did] = peer
    return peers


def _slug(did: str) -> str:
    """A file name for a DID: ``did:web:h%3A8443:p`` -> ``h-8443-p``."""
    body = unquote(did.removeprefix("did:web:").removeprefix("did:"))
    return re.sub(r"[^A-Za-z0-9._-]+", "-", body).strip("-.") or "peer"


def _document_keys(document: Mapping[str, Any], did: str) -> list[dict[str, Any]]:
    """The (kid, JWK) entries of a DID document's verification methods that carry a JWK."""
    entries = []
    for method in document.get("verificationMethod", []):
        if not isinstance(method, dict) or not isinstance(method.get("publicKeyJwk"), dict):
            continue
        kid = str(method.get("id", ""))
        kid = did + kid if kid.startswith("#") else kid  # relative DID URL (DID core §3.2)
        entries.append({"kid": kid, "jwk": dict(method["publicKeyJwk"])})
    return entries


def _service_url(document: Mapping[str, Any], where: Path) -> str:
    for service in document.get("service", []):
        if isinstance(service, dict) and service.get("type") == DSP_SERVICE_TYPE:
            endpoint = service.get("serviceEndpoint")
            if isinstance(endpoint, str):
                return endpoint.rstrip("/").removesuffix(DSP_PATH)
    raise ConfigError(f"{where}: no service of type {DSP_SERVICE_TYPE} to take the URL from")


def _peer_source(source: Path) -> tuple[Path, str, Path | None]:
    """did.json path, public URL and default TLS certificate of a folder or a did.json."""
    if not source.is_dir():
        document = _read_json(source)
        return source, _service_url(document if isinstance(document, dict) else {}, source), None
    config = _read_toml(source / CONFIG_FILE)
    url = config.get("participant", {}).get("url")
    if not isinstance(url, str):
        raise ConfigError(f"{source / CONFIG_FILE}: [participant] key 'url' is missing")
    cert = source / str(config.get("server", {}).get("tls_cert", TLS_CERT))
    return source / DID_FILE, url.rstrip("/"), cert if cert.is_file() else None


def _read_certificate(path: Path) -> str:
    from cryptography import x509  # only this command needs it

    try:
        text = path.read_text()
        x509.load_pem_x509_certificate(text.encode())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM certificate") from exc
    return text


def add_trusted_peer(
    dir: Path, source: Path, *, attributes: dict[str, str], tls_cert: Path | None
) -> Path:
    """Pin the peer described by ``source`` (its folder or its did.json) in ``trust/``.

    Writes ``trust/<slug>.json`` (replacing an earlier pin of the same DID, as in a key
    rotation) and returns its path. Attribute values are kept as given strings.
    """
    did_path, url, default_cert = _peer_source(source)
    document = _read_json(did_path)
    did = document.get("id") if isinstance(document, dict) else None
    if not isinstance(did, str):
        raise ConfigError(f"{did_path}: key 'id' must be the peer's DID")
    cert_path = tls_cert or default_cert
    data = {
        "did": did,
        "url": url,
        "keys": _document_keys(document, did),
        "tls_cert": _read_certificate(cert_path) if cert_path else None,
        "attributes": dict(attributes),
    }
    problems = _peer_problems(data)
    if problems:
        raise ConfigError(f"{did_path}: {problems[0][1]}")
    try:
        _peer(data)
    except ConfigError as exc:
        raise ConfigError(f"{did_path}: {exc.message}") from exc
    target = dir / "trust" / f"{_slug(did)}.json"
    if target.exists() and _read_json(target).get("did") != did:
        raise ConfigError(f"{target}: already pins another DID")
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_json(target, data)
    return target


# --- check ---------------------------------------------------------------------------------------

_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")


def _line_of(text: str, key: str, *, quoted: bool = False) -> int:
    """1-based line of ``key`` (``table.key`` for TOML tables) in ``text``; 1 if not found."""
    lines = text.splitlines()
    table, _, leaf = key.rpartition(".")
    start = 0
    if table:
        header = re.compile(rf"^\s*\[\s*{re.escape(table)}\s*\]")
        start = next((i for i, line in enumerate(lines) if header.match(line)), 0)
    pattern = re.compile(rf'"{re.escape(leaf)}"\s*:' if quoted else rf"^\s*{re.escape(leaf)}\s*=")
    for i in range(start, len(lines)):
        if pattern.search(lines[i]):
            return i + 1
    return start + 1


def _line_of_value(text: str, value: str, key: str) -> int:
    """The line of the quoted string ``value`` from the line of ``key`` on (lists may wrap)."""
    start = _line_of(text, key)
    lines = text.splitlines()
    quoted = (f'"{value}"', f"'{value}'")
    for i in range(start - 1, len(lines)):
        if any(q in lines[i] for q in quoted):
            return i + 1
    return start


def _toml_error_line(exc: tomllib.TOMLDecodeError, text: str) -> int:
    match = _TOML_POSITION.search(str(exc))
    return int(match.group(1)) if match else max(1, len(text.splitlines()))


def _parse_toml(path: Path, name: str, out: list[Problem]) -> tuple[str, dict[str, Any]] | None:
    try:
        text = path.read_text()
        return text, tomllib.loads(text)
    except OSError as exc:
        out.append(Problem(name, 1, f"cannot read: {exc.strerror}"))
    except UnicodeDecodeError:
        out.append(Problem(name, 1, "not UTF-8 text"))
    except tomllib.TOMLDecodeError as exc:
        message = _TOML_POSITION.sub("", str(exc)).strip()
        out.append(Problem(name, _toml_error_line(exc, text), f"invalid TOML: {message}"))
    return None


def _parse_json(path: Path, name: str, out: list[Problem]) -> tuple[str, Any] | None:
    try:
        text = path.read_text()
        return text, json.loads(text)
    except OSError as exc:
        out.append(Problem(name, 1, f"cannot read: {exc.strerror}"))
    except UnicodeDecodeError:
        out.append(Problem(name, 1, "not UTF-8 text"))
    except json.JSONDecodeError as exc:
        out.append(Problem(name, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})"))
    return None


def _check_settings(root: Path, out: list[Problem]) -> list[tuple[str, Path]]:
    """Check connector.toml; return (toml key, path) of the private files it names, if valid."""
    name = _rel(root, CONFIG_FILE)
    parsed = _parse_toml(root / CONFIG_FILE, name, out)
    if parsed is None:
        return []  # no names to follow; keys/ is still checked file by file
    text = parsed[0]
    try:
        settings = load_settings(root)
    except ConfigError as exc:
        match = re.search(r"\[(\w+)\]: (?:missing )?key '(\w+)'", exc.message)
        line = _line_of(text, f"{match.group(1)}.{match.group(2)}") if match else 1
        message = exc.message.removeprefix(str(root.resolve() / CONFIG_FILE)).lstrip(": ")
        out.append(Problem(name, line, message))
        return []
    return [("signing.key", settings.signing_key), ("server.tls_key", settings.tls_key),
            ("management.token_file", settings.management_token_file)]


def _check_private_files(root: Path, named: list[tuple[str, Path]], out: list[Problem]) -> None:
    try:
        config_text = (root / CONFIG_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        config_text = ""  # reported by _check_settings
    for key, path in named:
        if not path.is_file():
            line = _line_of(config_text, key)
            out.append(Problem(_rel(root, CONFIG_FILE), line, f"{key}: no file {path}"))
    others = sorted((root / "keys").glob("*")) if (root / "keys").is_dir() else []
    for path in dict.fromkeys([p for _, p in named if p.is_file()] + others):
        try:
            keys.check_private_mode(path)
        except ConfigError as exc:
            out.append(Problem(str(path), 1, exc.message.split(": ", 1)[-1]))


def _check_did_document(root: Path, out: list[Problem]) -> None:
    name = _rel(root, DID_FILE)
    parsed = _parse_json(root / DID_FILE, name, out)
    if parsed is None:
        return
    text, document = parsed
    try:
        settings = load_settings(root)
    except ConfigError:
        return  # reported by _check_settings
    if not isinstance(document, dict) or document.get("id") != settings.did:
        out.append(Problem(name, _line_of(text, "id", quoted=True),
                           f"id must be the participant DID {settings.did}"))
        return
    methods = {m.get("id"): m for m in document.get("verificationMethod", [])
               if isinstance(m, dict)}
    if settings.signing_kid not in methods:
        out.append(Problem(name, _line_of(text, "verificationMethod", quoted=True),
                           f"does not list the signing key {settings.signing_kid}"))
        return
    _check_signing_key_matches(settings.signing_key, methods[settings.signing_kid], name, text,
                               out)


def _check_signing_key_matches(
    key_path: Path, method: dict[str, Any], name: str, text: str, out: list[Problem]
) -> None:
    try:
        key = keys.load_any_signing_key(key_path)
    except ConfigError:
        return  # missing file or bad mode: reported by _check_private_files
    if method.get("publicKeyJwk") != signing_public_jwk(key):
        out.append(Problem(name, _line_of(text, "publicKeyJwk", quoted=True),
                           f"publicKeyJwk does not match the private key {key_path}"))


def _check_datasets(root: Path, policies: set[str], out: list[Problem]) -> None:
    seen: dict[str, str] = {}
    for path in sorted((root / "datasets").glob("*.toml")):
        name = _rel(root, f"datasets/{path.name}")
        parsed = _parse_toml(path, name, out)
        if parsed is None:
            continue
        text, data = parsed
        problems = _dataset_problems(data)
        out.extend(Problem(name, _line_of(text, key), msg) for key, msg in problems)
        if problems:
            continue
        for policy in data["policies"]:
            if policy not in policies:
                out.append(Problem(name, _line_of_value(text, policy, "policies"),
                                   f"policy {policy!r} has no file policies/{policy}.json"))
        if data["id"] in seen:
            out.append(Problem(name, _line_of(text, "id"),
                               f"dataset id {data['id']!r} is also declared in {seen[data['id']]}"))
        seen.setdefault(data["id"], name)
        for key in ("path", "token_file", "dsn_file"):
            given = data["source"].get(key)
            if given and not Path(given).is_absolute() and not (root / given).exists():
                what = "source file" if key == "path" else "secret file"
                out.append(Problem(name, _line_of(text, f"source.{key}"),
                                   f"no {what} {root / given}"))
            elif given and key != "path":
                try:
                    keys.check_private_mode(root / given)
                except ConfigError as exc:
                    out.append(Problem(name, _line_of(text, f"source.{key}"),
                                       exc.message.split(": ", 1)[-1]))


def _check_trust(root: Path, out: list[Problem]) -> None:
    for path in sorted((root / "trust").glob("*.json")):
        name = _rel(root, f"trust/{path.name}")
        parsed = _parse_json(path, name, out)
        if parsed is None:
            continue
        text, data = parsed
        problems = _peer_problems(data)
        out.extend(Problem(name, _line_of(text, key, quoted=True), msg) for key, msg in problems)
        if not problems:
            try:
                _peer(data)
            except ConfigError as exc:
                out.append(Problem(name, _line_of(text, "jwk", quoted=True), exc.message))


def _policy_checker() -> Callable[[str, str], list[Problem]]:
    """The policy engineer's checker, or a JSON-syntax check until that module exists."""
    try:
        module = importlib.import_module("connector.core.policy.check")
    except ImportError:
        return _check_policy_json
    checker: Callable[[str, str], list[Problem]] = module.check_policy_document
    return checker


def _check_policy_json(text: str, file: str) -> list[Problem]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return [Problem(file, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})")]
    if not isinstance(document, dict):
        return [Problem(file, 1, "a policy must be a JSON object")]
    return []


def _check_policies(root: Path, out: list[Problem]) -> set[str]:
    check = _policy_checker()
    names = set()
    for path in _policy_files(root):
        names.add(path.stem)
        name = _rel(root, f"policies/{path.name}")
        try:
            out.extend(check(path.read_text(), name))
        except (OSError, UnicodeDecodeError) as exc:
            out.append(Problem(name, 1, f"cannot read: {exc}"))
    return names


def check_folder(dir: Path) -> list[Problem]:
    """Every problem of the participant folder, as ``file:line: message``; empty when clean."""
    out: list[Problem] = []
    if not dir.is_dir():
        return [Problem(str(dir), 1, "not a directory")]
    named = _check_settings(dir, out)
    _check_private_files(dir, named, out)
    _check_did_document(dir, out)
    policies = _check_policies(dir, out)
    _check_datasets(dir, policies, out)
    _check_trust(dir, out)
    return out
