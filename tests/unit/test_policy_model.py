"""parse_policy: lenient compact JSON(-LD) input, typed right operands, errors with a path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from connector.core.errors import PolicyError
from connector.core.policy import parse_policy
from connector.core.policy.model import (
    AtomicConstraint,
    Duration,
    Invalid,
    LogicalConstraint,
    LogicalKind,
    Operator,
    Rule,
    parse_xsd_datetime,
    parse_xsd_duration,
)

ODRL = "http://www.w3.org/ns/odrl/2/"


def one_constraint(constraint: dict[str, Any]) -> Any:
    policy = parse_policy({"permission": [{"action": "use", "constraint": [constraint]}]})
    return policy.permissions[0].constraints[0]


def test_full_offer_parses_in_document_order() -> None:
    policy = parse_policy({
        "@id": "urn:offer:1", "@type": "Offer",
        "permission": [{"action": "use", "constraint": [
            {"leftOperand": "count", "operator": "lteq", "rightOperand": 100}],
            "duty": [{"action": "notify"}]}],
        "prohibition": [{"action": "use"}],
        "obligation": [{"action": "delete"}],
    })
    assert policy.id == "urn:offer:1"
    assert policy.permissions == (Rule("use", (AtomicConstraint("count", Operator.LTEQ, 100),),
                                       (Rule("notify"),)),)
    assert policy.prohibitions == (Rule("use"),)
    assert policy.obligations == (Rule("delete"),)


def test_empty_policy_is_an_open_offer() -> None:
    policy = parse_policy({"@type": "Set"})
    assert (policy.id, policy.permissions, policy.prohibitions, policy.obligations) == (
        None, (), (), ())


@pytest.mark.parametrize("left", ["count", "odrl:count", ODRL + "count", {"@id": "odrl:count"}])
def test_left_operand_spellings_compact(left: Any) -> None:
    assert one_constraint({"leftOperand": left, "operator": "eq", "rightOperand": 1}
                          ).left_operand == "count"


@pytest.mark.parametrize("operator", ["gt", "odrl:gt", ODRL + "gt", {"@id": "odrl:gt"}])
def test_operator_spellings(operator: Any) -> None:
    assert one_constraint({"leftOperand": "count", "operator": operator, "rightOperand": 1}
                          ).operator is Operator.GT


def test_prefixed_keys_and_bare_objects_are_read() -> None:
    policy = parse_policy({
        "odrl:permission": {"odrl:action": {"@id": "odrl:use"}, "odrl:constraint": {
            "odrl:leftOperand": "odrl:purpose", "odrl:operator": {"@id": "odrl:eq"},
            "odrl:rightOperand": "research"}}})
    assert policy.permissions == (
        Rule("use", (AtomicConstraint("purpose", Operator.EQ, "research"),)),)


def test_full_iri_keys_are_read() -> None:
    policy = parse_policy({ODRL + "prohibition": [{ODRL + "action": ODRL + "use"}]})
    assert policy.prohibitions == (Rule("use"),)


def test_foreign_iris_stay_as_written() -> None:
    c = one_constraint({"leftOperand": "https://w3id.org/catenax/2025/9/policy/Membership",
                        "operator": "eq", "rightOperand": "active"})
    assert c.left_operand == "https://w3id.org/catenax/2025/9/policy/Membership"


@pytest.mark.parametrize(("right", "expected"), [
    ("x", "x"),
    (5, 5),
    (2.5, 2.5),
    (True, "true"),
    (["a", "b"], ("a", "b")),
    ({"@value": "7", "@type": "xsd:integer"}, 7),
    ({"@value": "7.5", "@type": "http://www.w3.org/2001/XMLSchema#decimal"}, 7.5),
    ({"@value": "2025-01-01T00:00:00Z", "@type": "xsd:dateTime"}, "2025-01-01T00:00:00Z"),
    ({"@id": "_:EU"}, "_:EU"),
    ({"@list": ["a", {"@id": "b"}]}, ("a", "b")),
])
def test_right_operand_forms(right: Any, expected: Any) -> None:
    assert one_constraint({"leftOperand": "purpose", "operator": "eq", "rightOperand": right}
                          ).right_operand == expected


def test_typed_right_operands_are_converted_at_parse_time() -> None:
    date = one_constraint({"leftOperand": "dateTime", "operator": "lt",
                           "rightOperand": "2025-01-01T00:00:00Z"})
    assert date.value == datetime(2025, 1, 1, tzinfo=UTC)
    count = one_constraint({"leftOperand": "count", "operator": "lteq", "rightOperand": "100"})
    assert count.value == 100
    elapsed = one_constraint({"leftOperand": "elapsedTime", "operator": "lteq",
                              "rightOperand": "P30D"})
    assert elapsed.value == Duration(0, timedelta(days=30), "P30D")


@pytest.mark.parametrize(("left", "right"), [
    ("dateTime", "2025-13-01"), ("dateTime", "tomorrow"), ("dateTime", 5),
    ("count", -1), ("count", 1.5), ("count", "many"),
    ("elapsedTime", "30 days"), ("delayPeriod", "P"), ("elapsedTime", 30),
])
def test_ill_typed_right_operands_parse_as_invalid(left: str, right: Any) -> None:
    c = one_constraint({"leftOperand": left, "operator": "eq", "rightOperand": right})
    assert isinstance(c.value, Invalid)


def test_logical_constraint_parses_members() -> None:
    c = one_constraint({"or": [
        {"leftOperand": "purpose", "operator": "eq", "rightOperand": "a"},
        {"andSequence": [{"leftOperand": "count", "operator": "lt", "rightOperand": 3}]}]})
    assert c == LogicalConstraint(LogicalKind.OR, (
        AtomicConstraint("purpose", Operator.EQ, "a"),
        LogicalConstraint(LogicalKind.AND_SEQUENCE, (AtomicConstraint("count", Operator.LT, 3),)),
    ))


@pytest.mark.parametrize(("doc", "message"), [
    ({"permission": [{"action": "use", "constraint": [
        {"leftOperand": "count", "operator": "lteq", "rightOperand": 1},
        {"leftOperand": "count", "operator": "foo", "rightOperand": 1}]}]},
     "permission[0].constraint[1]: unknown operator 'foo'"),
    ({"permission": [{"constraint": []}]}, "permission[0]: rule has no action"),
    ({"prohibition": ["use"]}, "prohibition[0]: a rule must be a JSON object"),
    ({"permission": [{"action": 5}]}, "permission[0]: action must be a string, got 5"),
    ({"permission": [{"action": {"rdf:value": {"@id": "odrl:print"}, "refinement": []}}]},
     "permission[0]: action refinements are not supported"),
    ({"permission": [{"action": "use", "duty": [{"constraint": []}]}]},
     "permission[0].duty[0]: rule has no action"),
    ({"obligation": [{"action": "use", "constraint": [{"foo": 1}]}]},
     "obligation[0].constraint[0]: constraint is neither atomic (leftOperand, operator, "
     "rightOperand) nor logical (one of and, or, xone, andSequence)"),
    ({"permission": [{"action": "use", "constraint": [{"and": [], "or": []}]}]},
     "permission[0].constraint[0]: logical constraint needs exactly one of and, or, xone, "
     "andSequence, got and, or"),
    ({"permission": [{"action": "use", "constraint": [{"xone": []}]}]},
     "permission[0].constraint[0]: logical constraint 'xone' has no members"),
    ({"permission": [{"action": "use", "constraint": [{"and": [
        {"leftOperand": "count", "operator": "eq"}]}]}]},
     "permission[0].constraint[0].and[0]: constraint has no rightOperand"),
    ({"permission": [{"action": "use", "constraint": [
        {"leftOperand": "count", "rightOperand": 1}]}]},
     "permission[0].constraint[0]: constraint has no operator"),
    ({"permission": [{"action": "use", "constraint": [
        {"leftOperand": "purpose", "operator": "eq", "rightOperand": {"x": 1}}]}]},
     "permission[0].constraint[0]: right operand object needs '@value' or '@id'"),
    ({"permission": [{"action": "use", "constraint": [
        {"leftOperand": "purpose", "operator": "eq", "rightOperand": [["a"]]}]}]},
     "permission[0].constraint[0]: right operand ['a'] is not a string, number or list"),
    ({"permission": [{"action": "use", "constraint": [
        {"leftOperand": 7, "operator": "eq", "rightOperand": "a"}]}]},
     "permission[0].constraint[0]: leftOperand must be a string"),
])
def test_parse_errors_name_their_path(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    assert info.value.message == message


def test_non_object_policy_is_refused() -> None:
    with pytest.raises(PolicyError, match="a policy must be a JSON object"):
        parse_policy([])  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-03-04T05:06:07Z", datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)),
    ("2025-03-04T05:06:07", datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)),
    ("2025-03-04T05:06:07.5+02:00",
     datetime(2025, 3, 4, 5, 6, 7, 500000, tzinfo=timezone(timedelta(hours=2)))),
    ("2025-03-04T05:06:07.1234567-01:30",
     datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=timezone(-timedelta(hours=1, minutes=30)))),
    ("2025-13-04T05:06:07Z", None),
    ("2025-03-04", None),
    ("2025-03-04 05:06:07Z", None),
])
def test_xsd_datetime(text: str, expected: datetime | None) -> None:
    assert parse_xsd_datetime(text) == expected


@pytest.mark.parametrize(("text", "months", "exact"), [
    ("P30D", 0, timedelta(days=30)),
    ("PT1H", 0, timedelta(hours=1)),
    ("P1Y2M", 14, timedelta()),
    ("P1DT2H3M4.5S", 0, timedelta(days=1, hours=2, minutes=3, seconds=4.5)),
    ("-P1D", 0, -timedelta(days=1)),
])
def test_xsd_duration(text: str, months: int, exact: timedelta) -> None:
    assert parse_xsd_duration(text) == Duration(months, exact, text)


@pytest.mark.parametrize("text", ["P", "PT", "P1DT", "1D", "P1H", "PT1D", "P-1D", ""])
def test_xsd_duration_rejects(text: str) -> None:
    assert parse_xsd_duration(text) is None


def test_duration_months_clamp_to_month_end() -> None:
    one_month = parse_xsd_duration("P1M")
    assert one_month is not None
    assert one_month.after(datetime(2024, 1, 31, tzinfo=UTC)) == datetime(2024, 2, 29, tzinfo=UTC)
    assert one_month.after(datetime(2024, 12, 15, tzinfo=UTC)) == datetime(2025, 1, 15, tzinfo=UTC)


def test_duration_overflow_saturates() -> None:
    huge = parse_xsd_duration("P9999Y")
    assert huge is not None
    assert huge.after(datetime(2025, 1, 1, tzinfo=UTC)) == datetime.max.replace(tzinfo=UTC)
