"""Check a management answer against the OpenAPI document (adapters/http/openapi.yaml).

An answer is what the daemon's contract log holds for it (adapters/http/openapi.py): method,
route template, status, content type and, for JSON, the body. OpenAPI 3.1 schemas are JSON
Schema 2020-12, checked with ``jsonschema``; ``#/components/...`` references resolve in the
document.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from connector.adapters.http.openapi import document


def _operation(method: str, route: str) -> dict[str, Any] | None:
    item = document()["paths"].get(route)
    return item.get(method.lower()) if item else None


def _resolved(node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or what its ``$ref`` (``#/components/...``) points to."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = document()
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return _resolved(target)


def _schema_validator(schema: dict[str, Any]) -> Draft202012Validator:
    # The references are "#/components/...": give the schema the document's components.
    return Draft202012Validator({**schema, "components": document()["components"]})


def problems(answer: dict[str, Any]) -> list[str]:
    """What is wrong with one logged answer (empty when it matches the document)."""
    where = f"{answer['method']} {answer['route']} -> {answer['status']}"
    operation = _operation(answer["method"], answer["route"])
    if operation is None:
        return [f"{where}: the route is not in the document"]
    responses = operation["responses"]
    response = responses.get(str(answer["status"])) or responses.get("default")
    if response is None:
        return [f"{where}: status not documented"]
    response = _resolved(response)
    content = response.get("content", {})
    media = content.get(answer["contentType"])
    if media is None:
        return [f"{where}: content type {answer['contentType']!r} not in {sorted(content)}"]
    if answer["body"] is None or answer["contentType"] != "application/json":
        return []
    try:
        body = json.loads(answer["body"])
    except ValueError:
        return [f"{where}: the body is not JSON: {answer['body'][:200]!r}"]
    errors = sorted(_schema_validator(media["schema"]).iter_errors(body), key=str)
    return [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
            for e in errors[:5]]


def check_folder(folder: Path) -> tuple[int, list[str]]:
    """(answers checked, problems) over every contract log in ``folder``."""
    count, found = 0, []
    for log in sorted(folder.glob("*.jsonl")):
        for line in log.read_text(encoding="utf-8").splitlines():
            if line.strip():
                count += 1
                found += problems(json.loads(line))
    return count, found
