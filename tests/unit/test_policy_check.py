"""check_policy_document: one Problem per finding, with the file and the 1-based line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from connector.core.errors import Problem
from connector.core.policy.check import check_policy_document

TEMPLATES = sorted((Path(__file__).parents[2] / "policies").glob("*.json"))


def check(text: str) -> list[str]:
    return [str(p) for p in check_policy_document(textwrap.dedent(text).strip(), "p.json")]


def test_clean_policy_has_no_problems() -> None:
    assert check("""
        {
          "@type": "Offer",
          "permission": [{"action": "use", "constraint": [
            {"leftOperand": "dateTime", "operator": "gteq", "rightOperand": "2025-01-01T00:00:00Z"},
            {"leftOperand": "dateTime", "operator": "lteq", "rightOperand": "2030-12-31T23:59:59Z"},
            {"or": [{"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": ["a"]},
                    {"leftOperand": "membership", "operator": "isA", "rightOperand": "gold"}]}
          ]}]
        }""") == []


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_shipped_templates_are_clean(template: Path) -> None:
    assert check_policy_document(template.read_text(), str(template)) == []


def test_json_syntax_error_gives_its_line() -> None:
    assert check_policy_document('{\n  "permission": [\n    {"action": "use",}\n  ]\n}',
                                 "p.json") == [
        Problem("p.json", 3, "invalid JSON: Expecting property name enclosed in double quotes "
                             "(column 22)")]


def test_not_an_object() -> None:
    assert check("\n[1, 2]") == ["p.json:1: a policy must be a JSON object"]


def test_missing_permission_and_prohibition() -> None:
    assert check('{"@type": "Offer", "obligation": [{"action": "delete"}]}') == [
        "p.json:1: policy has neither permission nor prohibition"]


def test_rule_without_action() -> None:
    assert check("""
        {
          "permission": [
            {"action": "use"},
            {
              "constraint": []
            }
          ]
        }""") == ["p.json:4: permission[1]: rule has no action"]


def test_constraint_problems_are_located_on_their_line() -> None:
    problems = check("""
        {
          "permission": [{
            "action": "use",
            "constraint": [
              {"leftOperand": "count", "operator": "lteq", "rightOperand": 10},
              {"leftOperand": "industry", "operator": "eq", "rightOperand": "x"},
              {"leftOperand": "count",
               "operator": "foo",
               "rightOperand": 1},
              {"leftOperand": "dateTime", "operator": "lt",
               "rightOperand": "2025-01-41"},
              {"leftOperand": "count", "operator": "lteq", "rightOperand": "ten"},
              {"leftOperand": "elapsedTime", "operator": "lteq", "rightOperand": "30d"},
              {"leftOperand": "purpose", "operator": "isNoneOf", "rightOperand": "ads"},
              {"leftOperand": "purpose", "operator": "gt", "rightOperand": "ads"},
              {"leftOperand": "delayPeriod", "operator": "lt", "rightOperand": "P1D"},
              {"leftOperand": "membership", "operator": "isA", "rightOperand": ["a", "b"]}
            ]
          }]
        }""")
    assert problems == [
        "p.json:6: permission[0].constraint[1]: unknown left operand 'industry': evaluation "
        "denies (enforced: consent, count, dateTime, delayPeriod, elapsedTime, "
        "membership, participantId, "
        "purpose, spatial)",
        "p.json:8: permission[0].constraint[2]: unknown operator 'foo'",
        "p.json:11: permission[0].constraint[3]: dateTime needs an xsd:dateTime or xsd:date, got "
        "'2025-01-41'",
        "p.json:12: permission[0].constraint[4]: count needs a non-negative integer, got 'ten'",
        "p.json:13: permission[0].constraint[5]: elapsedTime needs an xsd:duration (e.g. P30D), "
        "got '30d'",
        "p.json:14: permission[0].constraint[6]: isNoneOf needs a list right operand",
        "p.json:15: permission[0].constraint[7]: gt compares numbers or dateTimes; purpose is text",
        "p.json:16: permission[0].constraint[8]: delayPeriod takes eq, gteq or gt, not lt",
        "p.json:17: permission[0].constraint[9]: isA needs a single right operand, not a list",
    ]


def test_logical_constraint_shape() -> None:
    assert check("""
        {"permission": [{"action": "use", "constraint": [
          {"and": [{"leftOperand": "count", "operator": "lt", "rightOperand": 3}],
           "or": [{"leftOperand": "count", "operator": "lt", "rightOperand": 3}]},
          {"leftOperand": "count"},
          {"xone": [
            {"leftOperand": "spatial", "operator": "eq", "rightOperand": "DE"},
            {"leftOperand": "nation", "operator": "eq", "rightOperand": "DE"}
          ]}
        ]}]}""") == [
        "p.json:2: permission[0].constraint[0]: logical constraint needs exactly one of and, or, "
        "xone, andSequence, got and, or",
        "p.json:4: permission[0].constraint[1]: constraint has no operator",
        "p.json:7: permission[0].constraint[2].xone[1]: unknown left operand 'nation': "
        "evaluation denies (enforced: consent, count, dateTime, delayPeriod, elapsedTime, "
        "membership, "
        "participantId, purpose, spatial)",
    ]


def test_contradictory_time_window_never_applies() -> None:
    assert check("""
        {"permission": [{"action": "use", "constraint": [
          {"leftOperand": "dateTime", "operator": "lt", "rightOperand": "2025-01-01T00:00:00Z"},
          {"and": [
            {"leftOperand": "purpose", "operator": "eq", "rightOperand": "x"},
            {"leftOperand": "dateTime", "operator": "gt", "rightOperand": "2026-01-01T00:00:00Z"}
          ]}
        ]}]}""") == [
        "p.json:5: permission[0].constraint[1].and[1]: rule can never apply: dateTime lt "
        "2025-01-01T00:00:00Z and dateTime gt 2026-01-01T00:00:00Z cannot both hold"]


@pytest.mark.parametrize(("lower", "upper", "never"), [
    (("gt", "2025-01-01T00:00:00Z"), ("lt", "2025-01-01T00:00:00Z"), True),
    (("gteq", "2025-01-01T00:00:00Z"), ("lteq", "2025-01-01T00:00:00Z"), False),
    (("gteq", "2025-01-01T00:00:00Z"), ("lt", "2025-01-01T00:00:00Z"), True),
    (("eq", "2025-01-02T00:00:00Z"), ("lteq", "2025-01-01T00:00:00Z"), True),
    (("gteq", "2025-01-01T00:00:00Z"), ("lteq", "2025-06-01T00:00:00+02:00"), False),
])
def test_datetime_window_bounds(lower: tuple[str, str], upper: tuple[str, str],
                                never: bool) -> None:
    doc = {"permission": [{"action": "use", "constraint": [
        {"leftOperand": "dateTime", "operator": op, "rightOperand": value}
        for op, value in (lower, upper)]}]}
    problems = check_policy_document(json.dumps(doc), "p.json")
    assert bool(problems) is never


def test_disjoint_alternatives_are_not_contradictions() -> None:
    assert check("""
        {"permission": [{"action": "use", "constraint": [{"or": [
          {"leftOperand": "dateTime", "operator": "lt", "rightOperand": "2025-01-01T00:00:00Z"},
          {"leftOperand": "dateTime", "operator": "gt", "rightOperand": "2026-01-01T00:00:00Z"}
        ]}]}]}""") == []


def test_prohibition_constraints_are_alternatives_under_edc_semantics() -> None:
    assert check("""
        {"prohibition": [{"action": "use", "constraint": [
          {"leftOperand": "dateTime", "operator": "lt", "rightOperand": "2025-01-01T00:00:00Z"},
          {"leftOperand": "dateTime", "operator": "gt", "rightOperand": "2026-01-01T00:00:00Z"}
        ]}]}""") == []


def test_count_bounds() -> None:
    assert check("""
        {"permission": [{"action": "use", "constraint": [
          {"leftOperand": "count", "operator": "lt", "rightOperand": 0}
        ]},
        {"action": "use", "constraint": [
          {"leftOperand": "count", "operator": "gt", "rightOperand": 10},
          {"leftOperand": "count", "operator": "lteq", "rightOperand": 5}
        ]},
        {"action": "use", "constraint": [
          {"leftOperand": "count", "operator": "lteq", "rightOperand": -1}
        ]}]}""") == [
        "p.json:2: permission[0].constraint[0]: count lt 0 can never hold: a count is never "
        "negative",
        "p.json:6: permission[1].constraint[1]: rule can never apply: count gt 10 and count lteq "
        "5 cannot both hold",
        "p.json:9: permission[2].constraint[0]: count needs a non-negative integer, got -1",
    ]


def test_prohibition_without_constraints_is_reported() -> None:
    assert check("""
        {"permission": [{"action": "use"}],
         "prohibition": [
           {"action": "use"}
         ]}""") == [
        "p.json:3: prohibition[0]: prohibition without constraints never applies (EDC "
        "semantics: it never denies); add a constraint or remove it"]


def test_duties_are_checked() -> None:
    assert check("""
        {"permission": [{"action": "use", "duty": [
          {"action": "notify", "constraint": [
            {"leftOperand": "recipient", "operator": "eq", "rightOperand": "x"}]}
        ]}]}""") == [
        "p.json:3: permission[0].duty[0].constraint[0]: unknown left operand 'recipient': "
        "evaluation denies (enforced: consent, count, dateTime, delayPeriod, elapsedTime, "
        "membership, "
        "participantId, purpose, spatial)"]


def test_prefixed_keys_single_objects_and_escaped_strings_are_located() -> None:
    assert check(r"""
        {"description": "a \"quoted\" \\ text, with [brackets] and {braces}",
         "odrl:permission": {
           "odrl:action": "odrl:use",
           "odrl:constraint": {"and": {"@list": [
             {"leftOperand": "odrl:count", "operator": "odrl:lteq", "rightOperand": 3},
             {"leftOperand": "odrl:count", "operator": {"@id": "odrl:nope"}, "rightOperand": 3}
           ]}}
         }}""") == ["p.json:6: permission[0].constraint[0].and[1]: unknown operator 'nope'"]


def test_many_rules_are_all_checked() -> None:
    rule = {"action": "use", "constraint": [
        {"leftOperand": "dateTime", "operator": "gteq", "rightOperand": "2025-01-01T00:00:00Z"},
        {"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": ["a", "b"]}]}
    text = json.dumps({"permission": [rule] * 200}, indent=2)
    assert check_policy_document(text, "big.json") == []
    broken = text.replace('"gteq"', '"nope"', 1)
    assert [str(p) for p in check_policy_document(broken, "big.json")] == [
        "big.json:8: permission[0].constraint[0]: unknown operator 'nope'"]
