"""Whether a consumer's request carries the published rules, however it spells them."""

from __future__ import annotations

from typing import Any

import pytest

from connector.core.catalog import echoed_rules, equivalent_rules, has_rules, rules_of, same_rules
from connector.core.policy.model import compact_operand, parse_policy

OURS: dict[str, Any] = {
    "@id": "urn:offer:d:members-only", "@type": "Offer", "target": "d",
    "permission": [{"action": "use", "constraint": [
        {"leftOperand": "membership", "operator": "eq", "rightOperand": "active"}]}]}


def _with(constraint: dict[str, Any], action: Any = "use") -> dict[str, Any]:
    return {"@id": OURS["@id"], "permission": [{"action": action, "constraint": [constraint]}]}


@pytest.mark.parametrize("term", ["membership", "edc:membership",
                                  "https://w3id.org/edc/v0.0.1/ns/membership"])
def test_our_operands_in_edcs_vocabulary_are_ours(term: str) -> None:
    assert compact_operand(term) == "membership"


@pytest.mark.parametrize(("term", "compact"), [
    ("odrl:purpose", "purpose"), ("http://www.w3.org/ns/odrl/2/count", "count"),
    ("edc:purpose", "edc:purpose"),  # an ODRL term in EDC's namespace is not ODRL's
    ("edc:somethingElse", "edc:somethingElse"), ("https://x.example/membership",
                                                  "https://x.example/membership")])
def test_other_terms_keep_their_namespace(term: str, compact: str) -> None:
    assert compact_operand(term) == compact


@pytest.mark.parametrize("theirs", [
    # EDC's management API, posting under {"@vocab": edc} (tests/interop/captures/mgmt-vocab_*)
    _with({"leftOperand": "edc:membership", "operator": "eq", "rightOperand": "active"}),
    _with({"leftOperand": "membership", "operator": "odrl:eq", "rightOperand": "active"},
          action="odrl:use"),
    {"permission": {"odrl:action": {"@id": "odrl:use"}, "odrl:constraint": {
        "odrl:leftOperand": "membership", "odrl:operator": {"@id": "odrl:eq"},
        "odrl:rightOperand": "active"}}},
])
def test_the_same_rules_spelled_otherwise_are_equivalent(theirs: dict[str, Any]) -> None:
    assert not same_rules(theirs, OURS)
    assert equivalent_rules(theirs, OURS) and equivalent_rules(OURS, theirs)


@pytest.mark.parametrize("theirs", [
    _with({"leftOperand": "membership", "operator": "eq", "rightOperand": "inactive"}),
    _with({"leftOperand": "membership", "operator": "neq", "rightOperand": "active"}),
    _with({"leftOperand": "edc:purpose", "operator": "eq", "rightOperand": "active"}),
    {"permission": [{"action": "use"}]},  # the constraint dropped
    {"permission": OURS["permission"], "prohibition": [{"action": "distribute"}]},
    {"permission": [{"action": "use", "constraint": "not a constraint"}]},  # does not parse
])
def test_different_rules_are_not_equivalent(theirs: dict[str, Any]) -> None:
    assert not equivalent_rules(theirs, OURS)


def test_rules_of_and_has_rules() -> None:
    assert rules_of(OURS) == {"permission": OURS["permission"]}
    assert has_rules(OURS) and not has_rules({"@id": OURS["@id"], "target": "d"})
    parsed = parse_policy(_with({"leftOperand": "edc:membership", "operator": "eq",
                                 "rightOperand": "active"}))
    assert parsed.permissions[0].constraints[0].left_operand == "membership"  # type: ignore[union-attr]


def test_echoed_rules_expand_edcs_prefix_and_keep_the_rest() -> None:
    theirs = {"@id": "x", "target": "d", "permission": [{"action": "use", "constraint": [
        {"leftOperand": "edc:membership", "operator": "eq", "rightOperand": "edc:kept"}]}]}
    echoed = echoed_rules(theirs)
    assert echoed == {"permission": [{"action": "use", "constraint": [
        {"leftOperand": "https://w3id.org/edc/v0.0.1/ns/membership", "operator": "eq",
         "rightOperand": "edc:kept"}]}]}  # right operands are literals: never touched
    assert equivalent_rules(echoed_rules(_with({"leftOperand": "edc:membership",
                                                "operator": "eq", "rightOperand": "active"})),
                            OURS)
