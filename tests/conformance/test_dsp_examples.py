"""Every official DSP 2025-1 example validates against its official schema.

This checks our schema loader (offline ``$ref`` resolution, the in-memory ``#definitions/``
fix) before the outbound-message tests rely on it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft201909Validator

from tests.conformance.dsp_schemas import EXAMPLES, SCHEMAS, errors, validate

# Examples whose schema does not follow ``<area>/<name>`` (see dsp/README.md).
SPECIAL = {
    "catalog/nested-catalog": "catalog/catalog",
    "negotiation/contract-agreement-message-full": "negotiation/contract-agreement-message",
    "common/catalogservice-did-service": "common/did-service",
    "common/dataservice-did-service": "common/did-service",
}

# Upstream inconsistency in tag 2025-1-err1: the example's serviceEndpoint ends in
# "/.well-known/dspace-version" but did-service-schema.json requires "https?://.*?/catalog$".
# Upstream tests never validate this example. We assert that it FAILS so that this test
# notices when upstream fixes either file (then move it to the passing set).
KNOWN_UPSTREAM_FAILURES = {"common/dataservice-did-service"}


def _example_names() -> list[str]:
    return sorted(p.relative_to(EXAMPLES).with_suffix("").as_posix()
                  for p in EXAMPLES.rglob("*.json"))


def schema_for(example: str) -> str:
    if example in SPECIAL:
        return SPECIAL[example]
    return example.removesuffix("_initial")


def _load(example: str) -> Any:
    return json.loads((EXAMPLES / f"{example}.json").read_text(encoding="utf-8"))


def test_the_official_set_is_complete() -> None:
    assert len(_example_names()) == 27
    assert len(list(SCHEMAS.rglob("*-schema.json"))) == 26


@pytest.mark.parametrize("example", _example_names())
def test_official_example_matches_its_schema(example: str) -> None:
    doc = _load(example)
    if example in KNOWN_UPSTREAM_FAILURES:
        problems = errors(schema_for(example), doc)
        assert problems, f"{example} now validates: upstream fixed it, drop it from the list"
        assert any("/catalog$" in p for p in problems), problems
        return
    validate(schema_for(example), doc)


# Schemas that no example targets directly: they are only reached through $ref.
REFERENCED_ONLY = {"common/context", "negotiation/contract", "transfer/data-address",
                   "transfer/transfer"}


def test_every_schema_is_well_formed_and_exercised() -> None:
    schemas = {p.relative_to(SCHEMAS).as_posix().removesuffix("-schema.json")
               for p in SCHEMAS.rglob("*-schema.json")}
    for schema in schemas:
        Draft201909Validator.check_schema(
            json.loads((SCHEMAS / f"{schema}-schema.json").read_text(encoding="utf-8")))
    assert schemas - REFERENCED_ONLY == {schema_for(e) for e in _example_names()}


@pytest.mark.parametrize("change", ["context-not-array", "context-without-dsp", "both-oneof",
                                    "neither-oneof", "offer-with-neither-rule"])
def test_the_schemas_do_reject(change: str) -> None:
    # Guards against a vacuous loader (e.g. an unresolved $ref that validates everything).
    doc = dict(_load("negotiation/contract-request-message_initial"))
    if change == "context-not-array":
        doc["@context"] = "https://w3id.org/dspace/2025/1/context.jsonld"
    elif change == "context-without-dsp":
        doc["@context"] = ["https://www.w3.org/ns/odrl.jsonld"]
    elif change == "both-oneof":
        doc["providerPid"] = "urn:uuid:1"
    elif change == "neither-oneof":
        del doc["callbackAddress"]
    else:
        doc["offer"] = {k: v for k, v in doc["offer"].items() if k != "permission"}
    assert errors("negotiation/contract-request-message", doc)
