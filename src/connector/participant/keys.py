"""The folder's signing keys: rotation, ``connector keys rotate DIR [--retire KID]``.

A participant rotates its key as DID Core §5.2 allows: publish the new key as a further
verification method, sign with it, keep the old method until every token the old key signed
has expired, then remove it. ``rotate`` writes ``keys/signing-key-N.pem`` (0600), adds
``<did>#key-N`` to ``did.json`` with every relationship the old key had, switches
``connector.toml`` [signing] ``key``/``kid`` and records when the old key stopped signing in
``state/rotations.json``. ``retire`` refuses until that moment plus the token lifetime and the
clock leeway has passed, then removes the method and deletes the old private key.

The running daemon picks the new key up when it reloads its settings; the retirement clock
starts at the rotation, so restart (or reload) the daemon right after rotating. Pinned peers
must re-pin (``connector trust add``) before our tokens carry the new kid; DCP verifiers cache
DID documents (EDC: 5 min), so a zero-failure rotation publishes first (``--publish-only``),
waits that long, then activates (``--activate KID``).
"""
from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connector import keys
from connector.config import CONFIG_FILE, load_settings
from connector.core.errors import ConfigError
from connector.core.identity import KEY_RELATIONSHIPS, signing_public_jwk
from connector.participant.layout import (
    DID_FILE,
    ROTATIONS_FILE,
    raise_first,
    write_atomic,
    write_json,
)

_KEY_FRAGMENT = re.compile(r"#key-(\d+)$")


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, None if there is no such file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc


def _rotations(dir: Path) -> dict[str, dict[str, Any]]:
    data = _read_json(dir / ROTATIONS_FILE)
    return data if isinstance(data, dict) else {}


def document_problems(document: Any, did: str, kid: str) -> list[tuple[str, str]]:
    """(key, message) for what ``did.json`` must say: the participant's DID as its ``id``,
    and the signing key ``kid`` among its verification methods (DID Core 1.0 §5.2)."""
    if not isinstance(document, dict) or document.get("id") != did:
        return [("id", f"id must be the participant DID {did}")]
    if kid not in verification_methods(document):
        return [("verificationMethod", f"does not list the signing key {kid}")]
    return []


def verification_methods(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The verification methods of a DID document, by id."""
    return {m["id"]: m for m in document.get("verificationMethod", [])
            if isinstance(m, dict) and isinstance(m.get("id"), str)}


def _document(dir: Path, did: str, kid: str) -> dict[str, Any]:
    document = _read_json(dir / DID_FILE)
    raise_first(dir / DID_FILE, document_problems(document, did, kid))
    assert isinstance(document, dict)
    return document


def _next_number(document: dict[str, Any], record: dict[str, Any]) -> int:
    # Never reuse a number, not even a retired one: a verifier may still cache the old key.
    ids = [str(m.get("id", "")) for m in document.get("verificationMethod", [])
           if isinstance(m, dict)]
    numbers = [int(m.group(1)) for i in [*ids, *record] if (m := _KEY_FRAGMENT.search(i))]
    return max(numbers, default=0) + 1


def _set_signing(text: str, key_path: str, kid: str) -> str:
    """``connector.toml`` with [signing] ``key`` and ``kid`` replaced (comments kept)."""
    lines = text.splitlines(keepends=True)
    section = ""
    done: set[str] = set()
    for i, line in enumerate(lines):
        header = re.match(r"\s*\[([^\]]+)\]", line)
        if header:
            section = header.group(1).strip()
            continue
        entry = re.match(r"(\s*)(key|kid)(\s*=\s*)", line)
        if section == "signing" and entry and entry.group(2) not in done:
            value = key_path if entry.group(2) == "key" else kid
            lines[i] = f"{entry.group(1)}{entry.group(2)} = {json.dumps(value)}\n"
            done.add(entry.group(2))
    if done != {"key", "kid"}:
        raise ConfigError(f"{CONFIG_FILE}: [signing] needs 'key' and 'kid' lines to rotate")
    return "".join(lines)


def _add_method(document: dict[str, Any], did: str, kid: str, jwk: dict[str, str]) -> None:
    document.setdefault("verificationMethod", []).append(
        {"id": kid, "type": "JsonWebKey2020", "controller": did, "publicKeyJwk": jwk})
    for relationship in KEY_RELATIONSHIPS:
        document.setdefault(relationship, []).append(kid)


def rotate_signing_key(
    dir: Path, *, publish_only: bool = False, now: float | None = None
) -> str:
    """Add a new signing key to the folder and (unless ``publish_only``) sign with it.

    Returns the new absolute kid. The new key has the old key's type (Ed25519 or P-256).
    """
    settings = load_settings(dir)
    now = time.time() if now is None else now
    document = _document(dir, settings.did, settings.signing_kid)
    record = _rotations(dir)
    number = _next_number(document, record)
    kid = f"{settings.did}#key-{number}"
    key_rel = f"keys/signing-key-{number}.pem"
    old = keys.load_any_signing_key(settings.signing_key)
    generate = (keys.generate_signing_key if signing_public_jwk(old)["kty"] == "OKP"
                else keys.generate_ec_signing_key)
    new = generate(dir / key_rel)
    _add_method(document, settings.did, kid, signing_public_jwk(new))
    write_json(dir / DID_FILE, document)
    record[kid] = {"key": key_rel, "published_at": int(now)}
    write_json(dir / ROTATIONS_FILE, record)
    if not publish_only:
        activate_signing_key(dir, kid, now=now)
    return kid


def _absolute(did: str, kid: str) -> str:
    return kid if kid.startswith(did + "#") else f"{did}#{kid.lstrip('#')}"


def activate_signing_key(dir: Path, kid: str, *, now: float | None = None) -> None:
    """Sign with the published key ``kid`` from now on; the old key's retirement clock starts."""
    settings = load_settings(dir)
    now = time.time() if now is None else now
    kid = _absolute(settings.did, kid)
    record = _rotations(dir)
    if kid not in record or "key" not in record[kid] or record[kid].get("retired_at"):
        raise ConfigError(f"{kid}: not a key published by 'connector keys rotate'")
    if kid == settings.signing_kid:
        raise ConfigError(f"{kid} already signs")
    old_rel = str(settings.signing_key.relative_to(settings.root))
    record.setdefault(settings.signing_kid, {"key": old_rel})
    record[settings.signing_kid]["signing_until"] = int(now)
    record[kid]["signing_from"] = int(now)
    write_json(dir / ROTATIONS_FILE, record)
    config = dir / CONFIG_FILE
    write_atomic(config, _set_signing(config.read_text(), record[kid]["key"], kid))


def _remove_method(document: dict[str, Any], did: str, kid: str) -> bool:
    def keep(entry: Any) -> bool:
        ref = entry.get("id") if isinstance(entry, dict) else entry
        return not (isinstance(ref, str) and _absolute(did, ref) == kid)

    before = len(document.get("verificationMethod", []))
    document["verificationMethod"] = [m for m in document.get("verificationMethod", [])
                                      if keep(m)]
    for relationship in KEY_RELATIONSHIPS:
        if isinstance(document.get(relationship), list):
            document[relationship] = [e for e in document[relationship] if keep(e)]
    return len(document["verificationMethod"]) < before


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retire_signing_key(dir: Path, kid: str, *, now: float | None = None) -> int:
    """Remove the rotated-out key ``kid`` from ``did.json`` and delete its private key file.

    Refused while a token it signed may still be valid: until it stopped signing plus
    [signing] ``token_ttl_s`` plus ``clock_leeway_s``. Returns the seconds that margin was.
    """
    settings = load_settings(dir)
    now = time.time() if now is None else now
    kid = _absolute(settings.did, kid)
    if kid == settings.signing_kid:
        raise ConfigError(f"{kid} is the current signing key; rotate first")
    record = _rotations(dir)
    until = record.get(kid, {}).get("signing_until")
    if not isinstance(until, int):
        raise ConfigError(f"{kid}: no rotation record in {ROTATIONS_FILE}; cannot tell when "
                          "its last token expires")
    margin = settings.token_ttl_s + settings.clock_leeway_s
    if now < until + margin:
        raise ConfigError(f"{kid} signed tokens until {_iso(until)}; they stay valid until "
                          f"{_iso(until + margin)}: retire in {int(until + margin - now) + 1} s")
    document = _document(dir, settings.did, settings.signing_kid)
    if not _remove_method(document, settings.did, kid):
        raise ConfigError(f"{kid}: not in {DID_FILE}")
    write_json(dir / DID_FILE, document)
    key_file = settings.root / str(record[kid].get("key", ""))
    if record[kid].get("key") and key_file.is_file() and key_file != settings.signing_key:
        key_file.unlink()
    record[kid]["retired_at"] = int(now)
    write_json(dir / ROTATIONS_FILE, record)
    return margin


def signing_keys(dir: Path) -> list[dict[str, Any]]:
    """The keys published in ``did.json``, each as {kid, status, key, since}
    (``connector keys list``).

    ``status`` is ``signing`` for the key tokens are signed with, ``published`` for one
    ``rotate --publish-only`` added and not yet activated, ``rotated out`` for one that
    stopped signing (``since`` then says when; retire it once its tokens expired).
    """
    settings = load_settings(dir)
    document = _document(dir, settings.did, settings.signing_kid)
    record = _rotations(dir)
    found = []
    for kid in verification_methods(document):
        kid = _absolute(settings.did, kid)
        entry = record.get(kid, {})
        if kid == settings.signing_kid:
            status, since = "signing", entry.get("signing_from")
        elif entry.get("signing_until"):
            status, since = "rotated out", entry["signing_until"]
        else:
            status, since = "published", entry.get("published_at")
        key = (str(settings.signing_key.relative_to(settings.root))
               if kid == settings.signing_kid else entry.get("key"))
        found.append({"kid": kid, "status": status, "key": key,
                      "since": _iso(since) if isinstance(since, int) else None})
    return found
