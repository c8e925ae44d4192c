"""Where things live in a participant folder, and the small file helpers every part shares.

Layout (the participant folder of README.md)::

    connector.toml  did.json  policies/*.json  datasets/*.toml  data/  trust/*.json
    credentials/*.jwt  keys/ (0600, git-ignored)  tls/cert.pem  state/ (git-ignored)

Every error names the file (and the key where there is one).
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connector.core.errors import ConfigError

DID_FILE = "did.json"
SIGNING_KEY = "keys/signing-key.pem"
TLS_KEY = "keys/tls-key.pem"
TLS_CERT = "tls/cert.pem"
TOKEN_FILE = "keys/management.token"
# Refreshed data tokens are derived with it; every replica of a participant needs the same one.
DATA_TOKEN_SECRET = "keys/data-token.secret"
DATABASE = "state/connector.db"
# The key fragment of the first signing key; a rotation adds key-2 next to it.
FIRST_KEY_FRAGMENT = "key-1"
CREDENTIALS_DIR = "credentials"
ROTATIONS_FILE = "state/rotations.json"


def toml_str(value: str) -> str:
    """``value`` as a TOML basic string."""
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    return json.dumps(value, ensure_ascii=True)


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as indented JSON, in one step (``write_atomic``)."""
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so a crash leaves the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON in ``path``; ConfigError names the file (and the line of a syntax error)."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML in ``path``; ConfigError names the file."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def raise_first(path: Path, problems: list[tuple[str, str]]) -> None:
    """ConfigError naming ``path`` and the first of ``problems`` (each a (key, message) of a
    rule the linter reports in full), if there is one: how a loader applies the rules."""
    if problems:
        raise ConfigError(f"{path}: {problems[0][1]}")


def check_init_target(root: Path) -> None:
    """ConfigError unless ``root`` is absent or an empty directory (``init`` commands)."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root}: exists and is not an empty directory")


# RFC 9110 §4.2.2: an https URL without a port means 443.
HTTPS_PORT = 443


def parse_public_url(url: str) -> tuple[str, int]:
    """Host and port of ``https://HOST[:PORT]`` (no port: 443; an optional trailing ``/``);
    else ConfigError."""
    shape = "must be https://HOST or https://HOST:PORT"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--url {url!r}: {shape} ({exc})") from exc
    bad_path = parts.path not in ("", "/")
    if parts.scheme != "https" or not parts.hostname or port == 0 or bad_path:
        raise ConfigError(f"--url {url!r}: {shape}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"--url {url!r}: {shape}")
    return parts.hostname.lower(), HTTPS_PORT if port is None else port


def canonical_url(url: str) -> str:
    """``url`` without a trailing ``/`` and without an explicit default port, so that one
    server has one URL and one did:web DID (did:web: ``https://h:443`` is ``did:web:h``)."""
    host, port = parse_public_url(url)
    shown = f"[{host}]" if ":" in host else host
    return f"https://{shown}" if port == HTTPS_PORT else f"https://{shown}:{port}"


def bind_host(host: str) -> str:
    """Where the server listens: loopback stays loopback, an IP is bound as is, a name on all."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "0.0.0.0"
