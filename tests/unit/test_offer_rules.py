"""Whether a consumer's request carries the published rules, however it spells them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- properties: any respelling is equivalent, any change of meaning is not --------------------

_OPERANDS = ["membership", "purpose", "participantId", "count"]


@st.composite
def _respelled(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A policy of 1-3 atomic constraints, and the same policy spelled differently."""
    atoms = draw(st.lists(st.tuples(st.sampled_from(_OPERANDS), st.sampled_from(["eq", "neq"]),
                                    st.text("abc", min_size=1, max_size=3)),
                          min_size=1, max_size=3))
    plain = {"permission": [{"action": "use", "constraint": [
        {"leftOperand": left, "operator": op, "rightOperand": right}
        for left, op, right in atoms]}]}

    def left(term: str) -> str:
        prefixes = [""] if term in ("purpose", "count") else ["", "edc:", EDC_IRI]
        if term in ("purpose", "count"):
            prefixes += ["odrl:", "http://www.w3.org/ns/odrl/2/"]
        return draw(st.sampled_from(prefixes)) + term

    constraints = [{draw(st.sampled_from(["leftOperand", "odrl:leftOperand"])): left(lo),
                    "operator": draw(st.sampled_from([op, "odrl:" + op, {"@id": "odrl:" + op}])),
                    "rightOperand": right} for lo, op, right in atoms]
    rule: dict[str, Any] = {"action": draw(st.sampled_from(["use", "odrl:use", {"@id": "use"}])),
                            "constraint": constraints[0] if len(constraints) == 1
                            and draw(st.booleans()) else constraints}
    other = {"permission": rule if draw(st.booleans()) else [rule]}
    return plain, other


EDC_IRI = "https://w3id.org/edc/v0.0.1/ns/"


@settings(max_examples=200, deadline=None)
@given(_respelled())
def test_any_respelling_is_equivalent(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    plain, other = pair
    assert equivalent_rules(plain, other) and equivalent_rules(other, plain)
    assert equivalent_rules(echoed_rules(other), plain)  # what we echo still means the same


@settings(max_examples=200, deadline=None)
@given(_respelled(), st.data())
def test_a_changed_right_operand_is_never_equivalent(
        pair: tuple[dict[str, Any], dict[str, Any]], data: st.DataObject) -> None:
    plain, _ = pair
    constraints = plain["permission"][0]["constraint"]
    i = data.draw(st.integers(0, len(constraints) - 1))
    changed = {"permission": [{"action": "use", "constraint": [
        {**c, "rightOperand": c["rightOperand"] + "x"} if j == i else c
        for j, c in enumerate(constraints)]}]}
    assert not equivalent_rules(changed, plain)
