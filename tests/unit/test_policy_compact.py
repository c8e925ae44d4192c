"""The compact YAML policy form: same ODRL JSON as the templates, errors with file:line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connector.core.policy import parse_policy
from connector.core.policy.check import check_policy_document, check_policy_file
from connector.core.policy.compact import YamlPolicyError, compile_yaml

TEMPLATES = Path(__file__).parents[2] / "policies"

# The YAML a person would write for each template in policies/*.json.
YAML_TEMPLATES = {
    "members-only": """\
description: {description}
permission:
  - action: use
    constraints:
      - membership eq active
""",
    "purpose-research": """\
description: {description}
permission:
  - action: use
    constraints: [purpose eq research]
""",
    "count-limited": """\
description: {description}
permission:
  - action: use
    constraints:
      - count lteq 100
""",
    "named-partners": """\
description: {description}
permission:
  - action: use
    constraints:
      - leftOperand: participantId
        operator: isAnyOf
        rightOperand:
          - did:web:partner-one.example.org
          - did:web:partner-two.example.org%3A8443
""",
    "time-limited": """\
description: {description}
permission:
  - action: use
    constraints:
      - dateTime gteq 2025-01-01T00:00:00Z
      - {{leftOperand: dateTime, operator: lteq, rightOperand: 2030-12-31T23:59:59Z}}
""",
    "open-use": """\
description: {description}
permission:
  - action: use
""",
}


def template(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((TEMPLATES / f"{name}.json").read_text())
    return doc


@pytest.mark.parametrize("name", sorted(YAML_TEMPLATES))
def test_yaml_compiles_to_the_json_template(name: str) -> None:
    expected = template(name)
    # A JSON string is a YAML double-quoted scalar: the description is copied exactly.
    text = YAML_TEMPLATES[name].format(description=json.dumps(expected["description"]))
    assert compile_yaml(text, f"{name}.yaml") == expected
    assert check_policy_file(text, f"{name}.yaml") == []


def test_every_json_template_has_a_yaml_twin() -> None:
    assert {path.stem for path in TEMPLATES.glob("*.json")} == set(YAML_TEMPLATES)


def test_the_documented_example_compiles_and_parses() -> None:
    doc = compile_yaml("""\
description: Members only, research purpose, until end of 2030, at most 100 uses
id: urn:offer:members
permission:
  - action: use
    constraints:
      - membership eq active
      - purpose isAnyOf [research, education]
      - dateTime lteq 2030-12-31T23:59:59Z
      - count lteq 100
      - or:
          - spatial eq "EU West"
          - xone: [membership eq gold, membership eq silver]
    duties:
      - action: notify
prohibition:
  - action: distribute
    constraint: {leftOperand: spatial, operator: isNoneOf, rightOperand: [US, CN]}
""", "example.yaml")
    assert doc["@id"] == "urn:offer:members"
    constraints = doc["permission"][0]["constraint"]
    assert constraints[1] == {"leftOperand": "purpose", "operator": "isAnyOf",
                              "rightOperand": ["research", "education"]}
    assert constraints[3]["rightOperand"] == "100"  # a string, as the DSP schema wants
    assert constraints[4] == {"or": [
        {"leftOperand": "spatial", "operator": "eq", "rightOperand": "EU West"},
        {"xone": [{"leftOperand": "membership", "operator": "eq", "rightOperand": "gold"},
                  {"leftOperand": "membership", "operator": "eq", "rightOperand": "silver"}]}]}
    assert doc["prohibition"][0]["constraint"] == [
        {"leftOperand": "spatial", "operator": "isNoneOf", "rightOperand": ["US", "CN"]}]
    policy = parse_policy(doc)
    assert [len(rule.constraints) for rule in policy.permissions] == [5]
    assert policy.permissions[0].duties[0].action == "notify"


def test_yaml_guesses_are_not_applied() -> None:
    doc = compile_yaml("permission:\n  - action: use\n    constraints:\n"
                       "      - {leftOperand: membership, operator: eq, rightOperand: yes}\n"
                       "      - {leftOperand: count, operator: lteq, rightOperand: 100}\n",
                       "f.yaml")
    assert [c["rightOperand"] for c in doc["permission"][0]["constraint"]] == ["yes", "100"]


@pytest.mark.parametrize(("text", "message"), [
    ("permission: [\n", "f.yaml:2: invalid YAML"),
    ("- action: use\n", "f.yaml:1: the policy must be a mapping"),
    ("type: Deal\n", "f.yaml:1: type must be Offer, Set or Agreement, got 'Deal'"),
    ("permission:\n  - constraints: []\n", "f.yaml:2: permission[0]: rule has no action"),
    ("permission:\n  - action: use\n    constrains: []\n",
     "f.yaml:3: permission[0]: unknown key 'constrains'"),
    ("permission:\n  - action: use\n    constraints:\n      - count lteq\n",
     "f.yaml:4: permission[0].constraint[0]: expected 'leftOperand operator rightOperand'"),
    ("permission:\n  - action: use\n    constraints:\n      - count below 3\n",
     "f.yaml:4: permission[0].constraint[0]: unknown operator 'below'"),
    ("permission:\n  - action: use\n    constraints:\n      - purpose isAnyOf [a, b\n",
     "f.yaml:4: permission[0].constraint[0]: list right operand must end with ']'"),
    ("permission:\n  - action: use\n    constraints:\n      - or: []\n",
     "f.yaml:4: permission[0].constraint[0]: 'or' needs at least one constraint"),
    ("permission:\n  - action: use\n    constraints:\n\n      - {leftOperand: count}\n",
     "f.yaml:5: permission[0].constraint[0]: constraint needs operator, rightOperand"),
    ("prohibition:\n  - action: use\n    duties: []\n",
     "f.yaml:3: prohibition[0]: unknown key 'duties'"),
    ("permission:\n  - action: use\n    constraint: [count eq 1]\n    constraints: []\n",
     "f.yaml:2: permission[0]: use 'constraints' or 'constraint', not both"),
])
def test_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(YamlPolicyError) as info:
        compile_yaml(text, "f.yaml")
    assert str(info.value).startswith(message)


def test_check_places_yaml_findings_on_their_lines() -> None:
    text = """\
description: two problems
permission:
  - action: use
    constraints:
      - count lteq 10
      - industry eq cars
      - or:
          - membership eq active
          - dateTime lt tomorrow
prohibition:
  - action: use
"""
    assert [str(p) for p in check_policy_file(text, "p.yaml")] == [
        "p.yaml:6: permission[0].constraint[1]: unknown left operand 'industry': evaluation "
        "denies (enforced: consent, count, dateTime, delayPeriod, elapsedTime, "
        "membership, "
        "participantId, purpose, spatial)",
        "p.yaml:9: permission[0].constraint[2].or[1]: dateTime needs an xsd:dateTime or "
        "xsd:date, got 'tomorrow'",
        "p.yaml:11: prohibition[0]: prohibition without constraints never applies (EDC "
        "semantics: it never denies); add a constraint or remove it",
    ]


def test_check_reports_a_compile_error_as_one_problem() -> None:
    problems = check_policy_file("permission:\n  - action: use\n    constraints: [count]\n",
                                 "p.yml")
    assert [str(p) for p in problems] == [
        "p.yml:3: permission[0].constraint[0]: expected 'leftOperand operator rightOperand', "
        "got 'count'"]


@pytest.mark.parametrize("check", [check_policy_file, check_policy_document])
def test_both_checkers_dispatch_on_the_extension(check: Any) -> None:
    json_text = (TEMPLATES / "members-only.json").read_text()
    assert check(json_text, "members-only.json") == []
    # The same text is not a compact YAML policy: its keys are ODRL JSON's.
    yaml_problems = check(json_text, "members-only.yaml")
    assert [p.line for p in yaml_problems] == [2]
    assert "unknown key '@context'" in yaml_problems[0].message
    assert [p.line for p in check("permission: [\n", "x.json")] == [1]
