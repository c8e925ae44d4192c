"""evaluate: operators × types, left operands × scopes, rules, logical constraints, reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connector.core.errors import PolicyError
from connector.core.policy import (
    Decision,
    PolicyContext,
    Scope,
    enforced_operands,
    evaluate,
    parse_policy,
)
from connector.core.policy.constraints import compare
from connector.core.policy.model import Operator

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
AGREED = NOW - timedelta(days=10)
CLAIMS = {"purpose": "research", "country": "DE", "membership": ["active", "gold"]}
ODRL = "http://www.w3.org/ns/odrl/2/"


def ctx(scope: Scope = Scope.TRANSFER, **changes: Any) -> PolicyContext:
    fields: dict[str, Any] = {"scope": scope, "now": NOW, "participant_id": "did:web:a.example",
                              "claims": CLAIMS, "agreement_time": AGREED, "use_count": 5}
    fields.update(changes)
    return PolicyContext(**fields)


def atom(left: str, operator: str, right: Any) -> dict[str, Any]:
    return {"leftOperand": left, "operator": operator, "rightOperand": right}


def decide(*constraints: dict[str, Any], kind: str = "permission",
           context: PolicyContext | None = None) -> Decision:
    policy = parse_policy({kind: [{"action": "use", "constraint": list(constraints)}]})
    return evaluate(policy, context or ctx())


# --- operators × types ------------------------------------------------------------------------

D1 = datetime(2025, 1, 1, tzinfo=UTC)
D2 = datetime(2026, 1, 1, tzinfo=UTC)

OPERATOR_CASES = [
    # strings
    ("a", "eq", "a", True), ("a", "eq", "b", False), ("a", "neq", "b", True),
    ("a", "neq", "a", False), ("a", "isA", "a", True), ("a", "isA", "b", False),
    ("a", "hasPart", "a", True), ("a", "hasPart", ("a", "b"), False),
    ("a", "isPartOf", ("a", "b"), True), ("c", "isPartOf", ("a", "b"), False),
    ("a", "isAllOf", ("a",), True), ("a", "isAllOf", ("a", "b"), False),
    ("a", "isAnyOf", ("a", "b"), True), ("c", "isAnyOf", ("a", "b"), False),
    ("c", "isNoneOf", ("a", "b"), True), ("a", "isNoneOf", ("a", "b"), False),
    # numbers, at the boundary; ints and floats compare as numbers
    (5, "eq", 5, True), (5, "eq", 5.0, True), (5, "eq", 6, False), (5, "neq", 6, True),
    (5, "lt", 6, True), (5, "lt", 5, False), (5, "lteq", 5, True), (6, "lteq", 5, False),
    (6, "gt", 5, True), (5, "gt", 5, False), (5, "gteq", 5, True), (4, "gteq", 5, False),
    (5, "isAnyOf", (1, 5), True), (5, "isNoneOf", (1, 5), False),
    # dateTimes
    (D1, "lt", D2, True), (D2, "lt", D2, False), (D2, "lteq", D2, True), (D2, "gt", D1, True),
    (D1, "gt", D1, False), (D1, "gteq", D1, True), (D1, "eq", D1, True), (D1, "neq", D2, True),
    (D1, "isAnyOf", (D1, D2), True),
    # sets (actual and/or right): eq is set equality, order and duplicates do not matter
    (("a", "b"), "eq", ("b", "a"), True), (("a", "b"), "eq", "a", False),
    (("a",), "eq", "a", True), (("a", "b"), "neq", ("a",), True),
    (("a", "b"), "isA", "b", True), (("a", "b"), "hasPart", ("b",), True),
    (("a", "b"), "hasPart", ("b", "c"), False), (("a", "b"), "isPartOf", ("a", "b", "c"), True),
    (("a", "d"), "isPartOf", ("a", "b", "c"), False), (("a", "b"), "isAllOf", ("a", "b"), True),
    (("a", "b"), "isAnyOf", ("b", "c"), True), (("a", "b"), "isAnyOf", ("c",), False),
    (("a", "b"), "isNoneOf", ("c",), True), (("a", "b"), "isNoneOf", ("b", "c"), False),
]


@pytest.mark.parametrize(("actual", "operator", "right", "expected"), OPERATOR_CASES)
def test_operator_semantics(actual: Any, operator: str, right: Any, expected: bool) -> None:
    assert compare(actual, Operator(operator), right) is expected


@pytest.mark.parametrize(("actual", "operator", "right", "why"), [
    ("abc", "lt", 5, "lt cannot compare string abc with number 5"),
    (5, "eq", "5", "eq cannot compare number 5 with string 5"),
    (5, "neq", "5", "neq cannot compare number 5 with string 5"),
    ("a", "lt", "b", "lt compares two numbers or two dateTimes, not strings"),
    (("a",), "gt", "a", "gt compares two numbers or two dateTimes, not a set"),
    ("a", "isA", ("a", "b"), "isA needs one value, not the set [a, b]"),
    (D1, "lt", 5, "lt cannot compare dateTime 2025-01-01T00:00:00Z with number 5"),
    (True, "eq", 1, "eq cannot compare boolean True with number 1"),
])
def test_type_mismatch_is_explained(actual: Any, operator: str, right: Any, why: str) -> None:
    assert compare(actual, Operator(operator), right) == why


def test_type_mismatch_fails_the_constraint_with_a_note() -> None:
    decision = decide(atom("purpose", "lt", 5))
    assert not decision.allowed
    assert decision.reasons == [
        "purpose lt 5 failed: type mismatch: lt cannot compare string research with number 5"]


# --- left operands × scopes -------------------------------------------------------------------

ALL_SCOPES = list(Scope)


@pytest.mark.parametrize("scope", ALL_SCOPES)
@pytest.mark.parametrize(("constraint", "allowed"), [
    (atom("dateTime", "lt", "2026-06-01T12:00:01Z"), True),
    (atom("dateTime", "lt", "2026-06-01T12:00:00Z"), False),
    (atom("dateTime", "gteq", "2026-06-01T14:00:00+02:00"), True),
    (atom("purpose", "eq", "research"), True),
    (atom("purpose", "isAnyOf", ["marketing", "ads"]), False),
    (atom("spatial", "isPartOf", ["DE", "FR"]), True),
    (atom("spatial", "eq", "_:EU"), False),
    (atom("membership", "isA", "active"), True),
    (atom("membership", "eq", "active"), False),  # the consumer holds two memberships
    (atom("participantId", "eq", "did:web:a.example"), True),
    (atom("participantId", "isNoneOf", ["did:web:a.example"]), False),
])
def test_context_operands_are_evaluated_in_every_scope(
        scope: Scope, constraint: dict[str, Any], allowed: bool) -> None:
    assert decide(constraint, context=ctx(scope)).allowed is allowed


@pytest.mark.parametrize("scope", [Scope.CATALOG, Scope.NEGOTIATION])
@pytest.mark.parametrize("constraint", [
    atom("count", "lteq", 0), atom("elapsedTime", "lt", "PT1S"), atom("delayPeriod", "eq", "P1Y"),
])
def test_usage_operands_are_deferred_before_an_agreement(
        scope: Scope, constraint: dict[str, Any]) -> None:
    decision = decide(constraint, context=ctx(scope, agreement_time=None, use_count=None))
    assert decision.allowed
    (result,) = decision.trace
    assert result.satisfied
    assert result.note == "deferred to every data access"


def test_deferred_usage_operand_does_not_trigger_a_prohibition() -> None:
    decision = decide(atom("count", "gt", 0), kind="prohibition", context=ctx(Scope.NEGOTIATION))
    assert decision.allowed


@pytest.mark.parametrize(("constraint", "use_count", "allowed"), [
    (atom("count", "lteq", 100), 100, True),
    (atom("count", "lteq", 100), 101, False),
    (atom("count", "lt", "3"), 3, False),
    (atom("count", "eq", {"@value": "1", "@type": "xsd:integer"}), 1, True),
])
def test_count_in_transfer(constraint: dict[str, Any], use_count: int, allowed: bool) -> None:
    assert decide(constraint, context=ctx(use_count=use_count)).allowed is allowed


@pytest.mark.parametrize(("constraint", "allowed"), [
    (atom("elapsedTime", "lteq", "P10D"), True),   # exactly 10 days elapsed
    (atom("elapsedTime", "lt", "P10D"), False),
    (atom("elapsedTime", "lteq", "P9DT23H"), False),
    (atom("elapsedTime", "gt", "PT1H"), True),
    (atom("elapsedTime", "lteq", "P1M"), True),
    (atom("elapsedTime", "eq", "P10D"), True),
    (atom("elapsedTime", "neq", "P10D"), False),
    (atom("elapsedTime", "isAnyOf", ["P10D"]), False),  # type mismatch
    (atom("delayPeriod", "eq", "P10D"), True),
    (atom("delayPeriod", "gteq", "P11D"), False),
    (atom("delayPeriod", "gt", "P10D"), False),
    (atom("delayPeriod", "gt", "P9D"), True),
    (atom("delayPeriod", "lt", "P9D"), False),  # type mismatch: a delay is a lower bound
])
def test_elapsed_time_and_delay_period_in_transfer(
        constraint: dict[str, Any], allowed: bool) -> None:
    assert decide(constraint).allowed is allowed


def test_elapsed_time_months_follow_the_calendar() -> None:
    agreed = datetime(2025, 1, 31, tzinfo=UTC)
    in_time = ctx(agreement_time=agreed, now=datetime(2025, 2, 28, tzinfo=UTC))
    too_late = ctx(agreement_time=agreed, now=datetime(2025, 3, 1, tzinfo=UTC))
    assert decide(atom("elapsedTime", "lteq", "P1M"), context=in_time).allowed
    assert not decide(atom("elapsedTime", "lteq", "P1M"), context=too_late).allowed


@pytest.mark.parametrize(("constraint", "changes", "note"), [
    (atom("count", "lteq", 5), {"use_count": None},
     "no use count in the context: count cannot be evaluated"),
    (atom("elapsedTime", "lteq", "P1D"), {"agreement_time": None},
     "no agreement time in the context: elapsedTime cannot be evaluated"),
    (atom("delayPeriod", "eq", "P1D"), {"agreement_time": None},
     "no agreement time in the context: delayPeriod cannot be evaluated"),
    (atom("purpose", "eq", "research"), {"claims": {}}, "the consumer has no 'purpose' claim"),
    (atom("spatial", "eq", "DE"), {"claims": {"country": ""}},
     "the consumer has no 'country' claim"),
    (atom("membership", "isA", "x"), {"claims": {"membership": []}},
     "the consumer has no 'membership' claim"),
    (atom("participantId", "eq", "x"), {"participant_id": None},
     "the consumer has no verified participant id"),
])
@pytest.mark.parametrize("kind", ["permission", "prohibition", "obligation"])
def test_missing_context_value_denies_in_every_rule_kind(
        constraint: dict[str, Any], changes: dict[str, Any], note: str, kind: str) -> None:
    decision = decide(constraint, kind=kind, context=ctx(Scope.TRANSFER, **changes))
    assert not decision.allowed
    assert decision.trace[0].note == note
    assert decision.reasons == [f"{decision.trace[0].head} failed: {note}"]


@pytest.mark.parametrize("scope", ALL_SCOPES)
@pytest.mark.parametrize("kind", ["permission", "prohibition", "obligation"])
@pytest.mark.parametrize("left", ["industry", "odrl:recipient",
                                  "https://w3id.org/catenax/2025/9/policy/Membership"])
def test_unknown_left_operand_denies(scope: Scope, kind: str, left: str) -> None:
    decision = decide(atom(left, "eq", "x"), kind=kind, context=ctx(scope))
    assert not decision.allowed
    name = left.removeprefix("odrl:")
    assert decision.reasons == [
        f"{name} eq x failed: unknown left operand '{name}': cannot be evaluated"]


@pytest.mark.parametrize("constraint", [
    atom("dateTime", "lt", "soon"), atom("count", "lt", -3), atom("elapsedTime", "lt", "1h")])
@pytest.mark.parametrize("scope", ALL_SCOPES)
def test_meaningless_right_operand_denies_in_every_scope(
        constraint: dict[str, Any], scope: Scope) -> None:
    decision = decide(constraint, kind="prohibition", context=ctx(scope))
    assert not decision.allowed
    assert decision.trace[0].note.endswith(": cannot be evaluated")


@pytest.mark.parametrize("spelling", ["count", "odrl:count", ODRL + "count"])
def test_prefixed_left_operands_are_enforced(spelling: str) -> None:
    assert not decide(atom(spelling, "lteq", 4)).allowed
    assert decide(atom(spelling, "lteq", 5)).allowed


def test_enforced_operands() -> None:
    assert enforced_operands() == frozenset({
        "dateTime", "elapsedTime", "count", "delayPeriod", "purpose", "spatial", "membership",
        "participantId", "consent"})


# --- rules ------------------------------------------------------------------------------------


def test_policy_without_rules_permits() -> None:
    assert evaluate(parse_policy({"@type": "Offer"}), ctx()) == Decision(True, ())


def test_permission_without_constraints_permits() -> None:
    assert evaluate(parse_policy({"permission": [{"action": "use"}]}), ctx()).allowed


def test_all_permissions_must_hold() -> None:
    policy = parse_policy({"permission": [
        {"action": "use", "constraint": [atom("purpose", "eq", "research")]},
        {"action": "use", "constraint": [atom("spatial", "eq", "FR")]}]})
    decision = evaluate(policy, ctx())
    assert not decision.allowed
    assert decision.reasons == ["spatial eq FR failed: the consumer's country is DE"]
    assert [r.path for r in decision.trace] == ["permission[0].constraint[0]",
                                                "permission[1].constraint[0]"]


def test_duty_constraints_must_hold() -> None:
    policy = parse_policy({"permission": [{"action": "use", "duty": [
        {"action": "compensate", "constraint": [atom("membership", "isA", "platinum")]}]}]})
    decision = evaluate(policy, ctx())
    assert not decision.allowed
    assert decision.trace[0].path == "permission[0].duty[0].constraint[0]"


def test_obligation_constraints_must_hold() -> None:
    holds = parse_policy({"obligation": [{"action": "delete", "constraint": [
        atom("dateTime", "gt", "2026-01-01T00:00:00Z")]}]})
    fails = parse_policy({"obligation": [{"action": "delete", "constraint": [
        atom("dateTime", "lt", "2026-01-01T00:00:00Z")]}]})
    assert evaluate(holds, ctx()).allowed
    assert not evaluate(fails, ctx()).allowed


def test_prohibition_denies_when_its_constraint_holds() -> None:
    decision = decide(atom("purpose", "eq", "research"), kind="prohibition")
    assert not decision.allowed
    assert decision.reasons == [
        "prohibited: purpose eq research holds: the consumer's purpose is research"]
    assert decide(atom("purpose", "eq", "marketing"), kind="prohibition").allowed


def test_prohibition_constraints_are_disjunctive_as_in_edc() -> None:
    # edc-10: one true constraint of two is enough (ODRL 2.2 would need both).
    decision = decide(atom("purpose", "eq", "research"), atom("spatial", "eq", "FR"),
                      kind="prohibition")
    assert not decision.allowed
    assert len(decision.reasons) == 1


def test_prohibition_without_constraints_never_denies_as_in_edc() -> None:
    policy = parse_policy({"permission": [{"action": "use"}], "prohibition": [{"action": "use"}]})
    assert evaluate(policy, ctx()).allowed


def test_prohibition_and_group_must_hold_entirely() -> None:
    both = {"and": [atom("purpose", "eq", "research"), atom("spatial", "eq", "DE")]}
    one = {"and": [atom("purpose", "eq", "research"), atom("spatial", "eq", "FR")]}
    decision = decide(both, kind="prohibition")
    assert not decision.allowed
    assert len(decision.reasons) == 2
    assert decide(one, kind="prohibition").allowed


def test_actions_do_not_filter_rules() -> None:
    policy = parse_policy({"prohibition": [{"action": "distribute", "constraint": [
        atom("purpose", "eq", "research")]}]})
    assert not evaluate(policy, ctx()).allowed


# --- logical constraints ----------------------------------------------------------------------

YES = atom("purpose", "eq", "research")
NO = atom("spatial", "eq", "FR")
DEFER = atom("count", "lteq", 1)
UNKNOWN = atom("industry", "eq", "x")


@pytest.mark.parametrize(("kind", "members", "allowed"), [
    ("and", [YES, YES], True), ("and", [YES, NO], False), ("and", [NO, NO], False),
    ("andSequence", [YES, YES], True), ("andSequence", [NO, YES], False),
    ("or", [NO, YES], True), ("or", [NO, NO], False), ("or", [YES], True),
    ("xone", [YES, NO], True), ("xone", [YES, YES], False), ("xone", [NO, NO], False),
    ("xone", [NO, NO, YES], True),
])
def test_logical_constraints(kind: str, members: list[dict[str, Any]], allowed: bool) -> None:
    assert decide({kind: members}).allowed is allowed


@pytest.mark.parametrize(("kind", "members", "allowed"), [
    ("and", [YES, DEFER], True), ("and", [NO, DEFER], False), ("or", [NO, DEFER], True),
    ("xone", [YES, DEFER], True), ("xone", [YES, YES, DEFER], False), ("xone", [NO, DEFER], True),
])
def test_deferred_members_count_as_unknown(
        kind: str, members: list[dict[str, Any]], allowed: bool) -> None:
    assert decide({kind: members}, context=ctx(Scope.NEGOTIATION)).allowed is allowed


@pytest.mark.parametrize("kind", ["and", "or", "xone", "andSequence"])
def test_unknown_member_denies_any_logical_constraint(kind: str) -> None:
    decision = decide({kind: [YES, UNKNOWN]})
    assert not decision.allowed
    assert decision.reasons == [
        "industry eq x failed: unknown left operand 'industry': cannot be evaluated"]


def test_unknown_member_is_not_hidden_by_a_failed_earlier_member() -> None:
    # No short-circuit: andSequence evaluates every member, so the ERROR still surfaces in a
    # prohibition, where a plain FAILS would have let it pass.
    decision = decide({"andSequence": [NO, UNKNOWN]}, kind="prohibition")
    assert not decision.allowed


def test_and_reasons_name_the_failed_members() -> None:
    decision = decide({"and": [YES, NO, atom("count", "lteq", 4)]})
    assert decision.reasons == ["spatial eq FR failed: the consumer's country is DE",
                                "count lteq 4 failed: 5 uses"]


def test_or_reason_names_the_logical_constraint_and_its_members() -> None:
    decision = decide({"or": [NO, atom("count", "lteq", 4)]})
    assert decision.reasons == [
        "or failed: 0 of 2 members hold — spatial eq FR: the consumer's country is DE; "
        "count lteq 4: 5 uses"]


def test_trace_is_pre_order_with_paths() -> None:
    decision = decide({"xone": [YES, {"and": [NO, YES]}]})
    assert [(r.path, r.operator, r.satisfied) for r in decision.trace] == [
        ("permission[0].constraint[0]", "xone", True),
        ("permission[0].constraint[0].xone[0]", "eq", True),
        ("permission[0].constraint[0].xone[1]", "and", False),
        ("permission[0].constraint[0].xone[1].and[0]", "eq", False),
        ("permission[0].constraint[0].xone[1].and[1]", "eq", True),
    ]
    assert decision.allowed and decision.reasons == []


# --- reasons and trace ------------------------------------------------------------------------


def test_reason_names_the_failed_constraint() -> None:
    decision = decide(atom("count", "lteq", 100), atom("purpose", "eq", "research"),
                      context=ctx(use_count=101))
    assert decision.reasons == ["count lteq 100 failed: 101 uses"]
    first = decision.trace[0]
    assert (first.left_operand, first.operator, first.right_operand, first.actual,
            first.satisfied, first.blocking) == ("count", "lteq", 100, 101, False, True)


def test_reason_for_datetime_and_sets() -> None:
    decision = decide(atom("dateTime", "lteq", "2025-12-31T23:59:59Z"),
                      atom("purpose", "isAnyOf", ["ads", "marketing"]))
    assert decision.reasons == [
        "dateTime lteq 2025-12-31T23:59:59Z failed: now is 2026-06-01T12:00:00Z",
        "purpose isAnyOf [ads, marketing] failed: the consumer's purpose is research"]


def test_list_claims_are_shown_sorted() -> None:
    decision = decide(atom("membership", "eq", "active"))
    assert decision.reasons == ["membership eq active failed: the consumer's membership is "
                                "[active, gold]"]


def test_context_requires_aware_datetimes() -> None:
    with pytest.raises(PolicyError, match="now must be timezone-aware"):
        ctx(now=datetime(2026, 1, 1))
    with pytest.raises(PolicyError, match="agreement_time must be timezone-aware"):
        ctx(agreement_time=datetime(2026, 1, 1))


def test_a_realistic_policy_is_evaluated_the_same_every_time() -> None:
    # Its speed is bench/policy_eval.py's (make bench), never a timed assertion here.
    policy = parse_policy({"permission": [{"action": "use", "constraint": [
        atom("count", "lteq", 100), atom("dateTime", "gteq", "2025-01-01T00:00:00Z"),
        atom("dateTime", "lteq", "2030-12-31T23:59:59Z"),
        atom("purpose", "isAnyOf", ["research", "edu"]), atom("spatial", "isPartOf", ["DE"]),
        atom("membership", "isA", "active"), atom("participantId", "eq", "did:web:a.example"),
        atom("elapsedTime", "lteq", "P30D"), atom("delayPeriod", "eq", "PT1H"),
        {"or": [YES, NO]}]}]})
    context = ctx()
    first = evaluate(policy, context)
    assert first.allowed
    assert all(evaluate(policy, context) == first for _ in range(100))
