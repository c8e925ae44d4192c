"""Hypothesis properties of the policy engine: logic laws, duality, determinism."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from connector.core.policy import PolicyContext, Scope, evaluate, parse_policy
from connector.core.policy.constraints import compare
from connector.core.policy.model import Operator, parse_xsd_datetime

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
WORDS = st.sampled_from(["research", "ads", "DE", "FR", "gold", "active"])
ORDER = st.sampled_from(["eq", "neq", "lt", "lteq", "gt", "gteq"])
SETS = st.sampled_from(["isA", "hasPart", "isPartOf", "isAllOf", "isAnyOf", "isNoneOf"])
INSTANTS = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2032, 1, 1),
                        timezones=st.just(UTC))


@st.composite
def atoms(draw: st.DrawFn) -> dict[str, Any]:
    """Atomic constraints that always evaluate to HOLDS or FAILS (never deferred or error)."""
    left = draw(st.sampled_from(["purpose", "spatial", "membership", "count", "dateTime"]))
    right: Any
    if left == "count":
        operator, right = draw(ORDER), draw(st.integers(0, 10))
    elif left == "dateTime":
        operator = draw(ORDER)
        right = draw(INSTANTS).isoformat().replace("+00:00", "Z")
    else:
        operator = draw(st.sampled_from(["eq", "neq"]) | SETS)
        right = draw(st.lists(WORDS, min_size=1, max_size=3)) if operator != "isA" else draw(
            WORDS)
    return {"leftOperand": left, "operator": operator, "rightOperand": right}


@st.composite
def contexts(draw: st.DrawFn) -> PolicyContext:
    claims = {"purpose": draw(WORDS), "country": draw(WORDS),
              "membership": draw(st.lists(WORDS, min_size=1, max_size=3))}
    return PolicyContext(Scope.TRANSFER, draw(INSTANTS), "did:web:x", claims,
                         agreement_time=NOW - timedelta(days=1), use_count=draw(st.integers(0, 12)))


def allowed(kind: str, constraints: list[dict[str, Any]], context: PolicyContext) -> bool:
    policy = parse_policy({kind: [{"action": "use", "constraint": constraints}]})
    return evaluate(policy, context).allowed


@given(st.lists(atoms(), min_size=1, max_size=5), contexts())
def test_and_is_all(members: list[dict[str, Any]], context: PolicyContext) -> None:
    each = [allowed("permission", [m], context) for m in members]
    assert allowed("permission", [{"and": members}], context) == all(each)
    assert allowed("permission", [{"andSequence": members}], context) == all(each)
    assert allowed("permission", members, context) == all(each)  # a rule's constraints


@given(st.lists(atoms(), min_size=1, max_size=5), contexts())
def test_or_is_any_and_xone_is_exactly_one(members: list[dict[str, Any]],
                                          context: PolicyContext) -> None:
    each = [allowed("permission", [m], context) for m in members]
    assert allowed("permission", [{"or": members}], context) == any(each)
    assert allowed("permission", [{"xone": members}], context) == (sum(each) == 1)


@given(atoms(), contexts())
def test_prohibition_is_the_dual_of_permission(member: dict[str, Any],
                                               context: PolicyContext) -> None:
    assert allowed("prohibition", [member], context) != allowed("permission", [member], context)


@given(st.text(), st.text() | st.lists(st.text(), max_size=3).map(tuple))
def test_neq_is_not_eq_for_strings(actual: str, right: Any) -> None:
    assert compare(actual, Operator.NEQ, right) is (not compare(actual, Operator.EQ, right))


@given(st.lists(WORDS, max_size=4).map(tuple), st.lists(WORDS, max_size=4).map(tuple))
def test_set_operator_laws(actual: tuple[str, ...], right: tuple[str, ...]) -> None:
    assert compare(actual, Operator.IS_ANY_OF, right) is not compare(
        actual, Operator.IS_NONE_OF, right)
    assert compare(actual, Operator.HAS_PART, right) is compare(right, Operator.IS_PART_OF, actual)
    assert compare(actual, Operator.IS_ALL_OF, right) is compare(actual, Operator.HAS_PART, right)


@given(st.lists(atoms(), max_size=6), contexts(), st.sampled_from(["permission", "prohibition"]))
def test_evaluation_is_deterministic_and_reasons_match(
        members: list[dict[str, Any]], context: PolicyContext, kind: str) -> None:
    doc = {kind: [{"action": "use", "constraint": [{"or": members}] if members else []}]}
    first = evaluate(parse_policy(doc), context)
    assert first == evaluate(parse_policy(doc), context)
    assert first.allowed is (first.reasons == [])  # a denial always says why, a permit never


@given(INSTANTS)
def test_xsd_datetime_round_trips(moment: datetime) -> None:
    assert parse_xsd_datetime(moment.isoformat()) == moment
    assert parse_xsd_datetime(moment.isoformat().replace("+00:00", "Z")) == moment
