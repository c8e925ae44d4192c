"""``connector policy check DIR``: every problem of a participant folder, as ``file:line:
message``, for a pre-commit hook or CI, instead of stopping at the first.

The rules are the loaders' own (``config.load_settings``, ``datasets.dataset_problems``,
``trust.peer_problems``, ``policies.name_problem``) and the policy linter's
(``core.policy.check``); this module parses each file once and places each problem on its line.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from connector import keys
from connector.config import CONFIG_FILE, load_settings
from connector.core.errors import ConfigError, Problem
from connector.core.identity import signing_public_jwk
from connector.core.policy.check import check_policy_document
from connector.participant.consents import (
    check_consents,
    consent_without_subject,
    subject_field_problem,
)
from connector.participant.datasets import dataset_problems
from connector.participant.keys import document_problems, verification_methods
from connector.participant.layout import DID_FILE
from connector.participant.policies import name_problem, policy_files
from connector.participant.trust import peer_from, peer_problems

# How the problem of a dataset whose source file is missing begins: the daemon does not offer
# that dataset, but unlike the other problems it is no reason to refuse the rest of an edit.
MISSING_SOURCE = "no source file"


def _rel(root: Path, name: str) -> str:
    """How a file is named in problems: the folder as given, then the file."""
    return str(root / name)


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


def _read_text(path: Path, name: str, out: list[Problem]) -> str | None:
    try:
        return path.read_text()
    except OSError as exc:
        out.append(Problem(name, 1, f"cannot read: {exc.strerror}"))
    except UnicodeDecodeError:
        out.append(Problem(name, 1, "not UTF-8 text"))
    return None


def _parse(path: Path, name: str, out: list[Problem]) -> tuple[str, Any] | None:
    """The text and the data of a ``.toml`` or JSON file, or None with the problem in ``out``."""
    text = _read_text(path, name, out)
    if text is None:
        return None
    try:
        return text, (tomllib.loads(text) if path.suffix == ".toml" else json.loads(text))
    except tomllib.TOMLDecodeError as exc:
        message = _TOML_POSITION.sub("", str(exc)).strip()
        out.append(Problem(name, _toml_error_line(exc, text), f"invalid TOML: {message}"))
    except json.JSONDecodeError as exc:
        out.append(Problem(name, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})"))
    return None


def _check_settings(root: Path, out: list[Problem]) -> list[tuple[str, Path]]:
    """Check connector.toml; return (toml key, path) of the private files it names, if valid."""
    name = _rel(root, CONFIG_FILE)
    parsed = _parse(root / CONFIG_FILE, name, out)
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
    parsed = _parse(root / DID_FILE, name, out)
    if parsed is None:
        return
    text, document = parsed
    try:
        settings = load_settings(root)
    except ConfigError:
        return  # reported by _check_settings
    problems = document_problems(document, settings.did, settings.signing_kid)
    out.extend(Problem(name, _line_of(text, key, quoted=True), msg) for key, msg in problems)
    if not problems:
        method = verification_methods(document)[settings.signing_kid]
        _check_signing_key_matches(settings.signing_key, method, name, text, out)


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


def _parsed(root: Path, folder: str, suffix: str, out: list[Problem]
            ) -> Iterator[tuple[str, str, Any]]:
    """(name, text, data) of each ``folder/*suffix`` file that parses (TOML or JSON)."""
    for path in sorted((root / folder).glob(f"*{suffix}")):
        name = _rel(root, f"{folder}/{path.name}")
        parsed = _parse(path, name, out)
        if parsed is not None:
            yield name, *parsed


def _check_datasets(root: Path, policies: set[str], out: list[Problem]) -> None:
    seen: dict[str, str] = {}
    for name, text, data in _parsed(root, "datasets", ".toml", out):
        problems = dataset_problems(data)
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
        if "subject_field" in data and (why := subject_field_problem(data, root)) is not None:
            out.append(Problem(name, _line_of(text, "subject_field"), why))
        elif (why := consent_without_subject(data, root)) is not None:
            out.append(Problem(name, _line_of(text, "policies"), why))
        for key in ("path", "token_file", "dsn_file"):
            given = data["source"].get(key)
            if given and not Path(given).is_absolute() and not (root / given).exists():
                what = MISSING_SOURCE if key == "path" else "no secret file"
                out.append(Problem(name, _line_of(text, f"source.{key}"),
                                   f"{what} {root / given}"))
            elif given and key != "path":
                try:
                    keys.check_private_mode(root / given)
                except ConfigError as exc:
                    out.append(Problem(name, _line_of(text, f"source.{key}"),
                                       exc.message.split(": ", 1)[-1]))


def _check_trust(root: Path, out: list[Problem]) -> None:
    for name, text, data in _parsed(root, "trust", ".json", out):
        problems = peer_problems(data)
        out.extend(Problem(name, _line_of(text, key, quoted=True), msg) for key, msg in problems)
        if not problems:
            try:
                peer_from(data)
            except ConfigError as exc:
                out.append(Problem(name, _line_of(text, "jwk", quoted=True), exc.message))

def _check_policies(root: Path, out: list[Problem]) -> set[str]:
    names: set[str] = set()
    for path in policy_files(root):
        name = _rel(root, f"policies/{path.name}")
        problem = name_problem(path, names)
        if problem is not None:
            out.append(Problem(name, 1, problem))
        names.add(path.stem)
        try:
            out.extend(check_policy_document(path.read_text(), name))
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
    out.extend(check_consents(dir))
    return out
