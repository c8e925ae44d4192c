"""``policies/*.json`` (ODRL JSON) and ``policies/*.yaml`` (the compact form, compiled to the
same JSON by ``core.policy.compact``): loading, content hashes and git commits.

A policy is named by its file's stem; ``name_problem`` is the rule on names that both
``load_policies`` and ``lint`` apply. What a policy may say is ``core.policy.check``'s.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import msgspec

from connector.core.errors import ConfigError, PolicyError
from connector.core.policy.compact import compile_yaml

POLICY_SUFFIXES = (".json", ".yaml", ".yml")


def policy_files(dir: Path) -> list[Path]:
    """The policy files of the folder ``dir``, sorted."""
    return sorted(p for p in (dir / "policies").glob("*") if p.suffix in POLICY_SUFFIXES)


def name_problem(path: Path, names: Collection[str]) -> str | None:
    """Why ``path`` cannot name a policy next to ``names`` (those of the files before it)."""
    if path.stem in names:
        return f"a policy named {path.stem!r} already exists"
    return None


def load_policies(dir: Path, skip: Collection[Path] = ()) -> dict[str, dict[str, Any]]:
    """Policy name (file stem) -> ODRL JSON, for every ``policies/*.json`` and ``*.yaml``
    but the files in ``skip`` (those ``connector policy check`` finds a problem in)."""
    policies: dict[str, dict[str, Any]] = {}
    for path in policy_files(dir):
        if path in skip:
            continue
        problem = name_problem(path, policies)
        if problem is not None:
            raise ConfigError(f"{path}: {problem}")
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
    for path in policy_files(dir):
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

