"""Validate documents against the official DSP 2025-1 JSON Schemas in ``dsp/schemas``.

``validate("negotiation/contract-request-message", doc)`` loads
``dsp/schemas/negotiation/contract-request-message-schema.json``. Cross-file ``$ref``s use
absolute ``https://w3id.org/dspace/2025/1/...`` URIs; they are resolved offline by mapping
that prefix onto ``dsp/schemas/`` (see ``dsp/README.md``).

The schema files are kept verbatim. Three upstream transfer schemas write
``#definitions/...`` (no ``/`` after ``#``), which is not a JSON Pointer; the loader rewrites
it to ``#/definitions/...`` in memory only.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft201909Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT201909

HERE = Path(__file__).parent / "dsp"
SCHEMAS = HERE / "schemas"
EXAMPLES = HERE / "examples"
DSP_PREFIX = "https://w3id.org/dspace/2025/1/"


class SchemaViolation(AssertionError):
    """A document does not validate against its DSP schema."""


def _load(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text.replace('#definitions/', '#/definitions/'))
    return doc


def _retrieve(uri: str) -> Resource[Any]:
    if not uri.startswith(DSP_PREFIX):
        raise NoSuchResource(ref=uri)
    path = SCHEMAS / uri.removeprefix(DSP_PREFIX)
    if not path.is_file():
        raise NoSuchResource(ref=uri)
    return Resource.from_contents(_load(path), default_specification=DRAFT201909)


_REGISTRY: Registry[Any] = Registry(retrieve=_retrieve)


def schema_path(kind: str) -> Path:
    """The schema file for ``kind``, e.g. ``"catalog/catalog"``."""
    path = SCHEMAS / f"{kind}-schema.json"
    if not path.is_file():
        raise KeyError(f"no DSP schema for {kind!r} (looked for {path})")
    return path


@cache
def validator(kind: str) -> Draft201909Validator:
    """A cached validator for the schema ``kind``."""
    schema = _load(schema_path(kind))
    Draft201909Validator.check_schema(schema)
    return Draft201909Validator(schema, registry=_REGISTRY)


def errors(kind: str, doc: Any) -> list[str]:
    """Every violation of ``kind``'s schema in ``doc``, one readable line each."""
    return [_describe(e) for e in validator(kind).iter_errors(doc)]


def validate(kind: str, doc: Any) -> None:
    """Raise SchemaViolation (with the most relevant errors) unless ``doc`` matches ``kind``."""
    found = list(validator(kind).iter_errors(doc))
    if not found:
        return
    best = best_match(found)
    lines = [f"document does not match DSP schema {kind!r}:", f"  best match: {_describe(best)}"]
    for err in best.context or []:
        lines.append(f"    sub-error: {_describe(err)}")
    others = [e for e in found if e is not best]
    lines += [f"  also: {_describe(e)}" for e in others]
    lines.append(f"  document: {json.dumps(doc, indent=None, sort_keys=True)[:2000]}")
    raise SchemaViolation("\n".join(lines))


def _describe(err: Any) -> str:
    where = "/".join(str(p) for p in err.absolute_path) or "(root)"
    via = "/".join(str(p) for p in err.absolute_schema_path)
    return f"at {where}: {err.message} [schema path: {via}]"
