"""``datasets/*.toml``: a dataset, where its records live, the policies and formats it offers.

``dataset_problems`` is the one set of rules: ``load_datasets`` raises the first problem,
``lint`` reports them all with their lines.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.core.catalog import DatasetText
from connector.core.errors import ConfigError
from connector.participant.layout import raise_first, read_toml

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


@dataclass(frozen=True)
class DatasetDecl(DatasetText):
    """One ``datasets/*.toml``: a dataset, where its records live and the policies it offers."""

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
    # `confidential = true`: a caller who may see no offer of it is not told it exists (nor
    # which terms it misses); by default it learns which constraints it does not meet.
    confidential: bool = False
    # `subject_field = "patient"`: the field of each record naming its data subject, which a
    # policy's `consent` constraint filters by (core/consent.py, docs/consent.md).
    subject_field: str | None = None

    @property
    def offered_formats(self) -> tuple[str, ...]:
        """The transfer formats offered: ``formats`` if declared, else ``format``."""
        return self.formats or (self.format,)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def dataset_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
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
    if "confidential" in data and not isinstance(data["confidential"], bool):
        found.append(("confidential", "key 'confidential' must be true or false"))
    if "subject_field" in data and (not isinstance(data["subject_field"], str)
                                    or not data["subject_field"]):
        found.append(("subject_field", "key 'subject_field' must be the non-empty name of a "
                      "field of the records"))
    if "formats" in data and (not _is_str_list(data["formats"]) or not data["formats"]
                              or any(f not in FORMATS for f in data["formats"])):
        found.append(("formats", f"key 'formats' must be a non-empty list of {FORMATS}"))
    source = data.get("source")
    if not isinstance(source, dict):
        return [*found, ("source", "table [source] with 'type' and 'path' is required")]
    return found + source_problems(source)


def source_problems(source: Mapping[str, Any]) -> list[tuple[str, str]]:
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


def dataset_decl(data: Mapping[str, Any], root: Path) -> DatasetDecl:
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
        confidential=bool(data.get("confidential", False)),
        subject_field=data.get("subject_field"),
    )


def load_datasets(dir: Path, skip: Collection[Path] = ()) -> list[DatasetDecl]:
    """All ``datasets/*.toml`` of the folder but those in ``skip``, sorted by id;
    ConfigError names file and key."""
    decls: dict[str, DatasetDecl] = {}
    for path in sorted((dir / "datasets").glob("*.toml")):
        if path in skip:
            continue
        data = read_toml(path)
        raise_first(path, dataset_problems(data))
        decl = dataset_decl(data, dir.resolve())
        if decl.id in decls:
            raise ConfigError(f"{path}: key 'id': dataset id {decl.id!r} is declared twice")
        decls[decl.id] = decl
    return [decls[k] for k in sorted(decls)]

