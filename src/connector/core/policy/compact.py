"""The compact YAML policy form (``policies/*.yaml``), compiled to the ODRL JSON the engine takes.

Theory of operation
-------------------
People write and review policies; the wire carries ODRL JSON. This module is the one-way
bridge: ``compile_yaml`` reads YAML and returns exactly the JSON a template in
``policies/*.json`` would hold, so everything downstream (``parse_policy``, ``evaluate``,
``check``) sees one form. The grammar::

    description: free text                       # optional
    id: urn:offer:members                        # optional, becomes @id
    type: Offer                                  # optional: Offer (default), Set, Agreement
    permission:                                  # also prohibition:, obligation:
      - action: use                              # required
        constraints:                             # optional; "constraint" is accepted too
          - membership eq active                 # "leftOperand operator rightOperand"
          - purpose isAnyOf [research, education]   # [a, b] is a list right operand
          - spatial eq "EU West"                 # quotes keep spaces
          - {leftOperand: count, operator: lteq, rightOperand: 100}   # explicit mapping
          - or:                                  # and: / or: / xone: / andSequence:
              - dateTime lteq 2030-12-31T23:59:59Z
              - membership eq active
        duties:                                  # permission only; rules like the above
          - action: notify

Every scalar is read as a string, whatever YAML would guess (no ``yes`` -> True, no dates,
no ``100`` -> int): right operands stay strings, as the DSP 2025-1 schema wants them.

Errors raise ``YamlPolicyError`` (a ``PolicySyntaxError``) whose message starts
``file:line:``; lines come from the nodes ``yaml.compose`` builds (PyYAML keeps each node's
start mark). ``compile_with_lines`` also returns the line of every ODRL JSON path, so
``check`` can place its findings.
"""

from __future__ import annotations

import re
from typing import Any, TypeAlias

import yaml

from connector.core.policy.model import (
    LogicalKind,
    Operator,
    PolicySyntaxError,
    Step,
    format_path,
)

DSP_CONTEXT = "https://w3id.org/dspace/2025/1/context.jsonld"
_POLICY_TYPES = frozenset({"Offer", "Set", "Agreement"})
_RULE_KINDS = ("permission", "prohibition", "obligation")
_OPERATORS = frozenset(op.value for op in Operator)
_LOGICAL = frozenset(kind.value for kind in LogicalKind)
_ATOMIC_KEYS = ("leftOperand", "operator", "rightOperand")

# libyaml's loader when PyYAML was built with it (about 5x faster); both keep node marks.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Steps: TypeAlias = tuple[Step, ...]
LineMap: TypeAlias = dict[Steps, int]


class YamlPolicyError(PolicySyntaxError):
    """A YAML policy that does not compile; ``file`` and ``line`` say where."""

    def __init__(self, file: str, line: int, steps: Steps, detail: str) -> None:
        super().__init__(steps, detail)
        self.file = file
        self.line = line
        where = f"{format_path(steps)}: " if steps else ""
        self.message = f"{file}:{line}: {where}{detail}"
        self.args = (self.message,)


def compile_yaml(text: str, file: str) -> dict[str, Any]:
    """The ODRL JSON policy the YAML ``text`` describes; ``file`` labels errors."""
    return compile_with_lines(text, file)[0]


def compile_with_lines(text: str, file: str) -> tuple[dict[str, Any], LineMap]:
    """``compile_yaml`` plus the 1-based line of every ODRL JSON path it produced."""
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:  # foreign error translated where it enters
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlPolicyError(file, line, (), f"invalid YAML: {problem}") from exc
    return _Compiler(file).policy(root)


class _Compiler:
    """Walks the composed node tree; ``lines`` records where each output path came from."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: LineMap = {}

    def fail(self, node: yaml.Node | None, steps: Steps, detail: str) -> YamlPolicyError:
        line = node.start_mark.line + 1 if node is not None else 1
        return YamlPolicyError(self.file, line, steps, detail)

    def policy(self, root: yaml.Node | None) -> tuple[dict[str, Any], LineMap]:
        members = self.mapping(root, (), ("description", "id", "type", *_RULE_KINDS))
        self.lines[()] = 1
        kind = self.text(members["type"], ("type",)) if "type" in members else "Offer"
        if kind not in _POLICY_TYPES:
            raise self.fail(members["type"], (), f"type must be Offer, Set or Agreement, "
                            f"got {kind!r}")
        doc: dict[str, Any] = {"@context": [DSP_CONTEXT], "@type": kind}
        if "id" in members:
            doc["@id"] = self.text(members["id"], ("@id",))
        if "description" in members:
            doc["description"] = self.text(members["description"], ("description",))
        for rule_kind in _RULE_KINDS:
            if rule_kind in members:
                doc[rule_kind] = self.rules(members[rule_kind], (rule_kind,))
        return doc, self.lines

    def rules(self, node: yaml.Node, steps: Steps) -> list[dict[str, Any]]:
        return [self.rule(item, (*steps, i)) for i, item in enumerate(self.sequence(node, steps))]

    def rule(self, node: yaml.Node, steps: Steps) -> dict[str, Any]:
        allowed = ["action", "constraints", "constraint"]
        if steps[0] == "permission" and len(steps) == 2:
            allowed += ["duties", "duty"]
        members = self.mapping(node, steps, tuple(allowed))
        if "action" not in members:
            raise self.fail(node, steps, "rule has no action")
        rule: dict[str, Any] = {"action": self.text(members["action"], (*steps, "action"))}
        constraints = self.either(members, "constraints", "constraint", node, steps)
        if constraints is not None:
            items = self.sequence(constraints, (*steps, "constraint"))
            rule["constraint"] = [self.constraint(item, (*steps, "constraint", i))
                                  for i, item in enumerate(items)]
        duties = self.either(members, "duties", "duty", node, steps)
        if duties is not None:
            rule["duty"] = self.rules(duties, (*steps, "duty"))
        return rule

    def constraint(self, node: yaml.Node, steps: Steps) -> dict[str, Any]:
        self.lines[steps] = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            return self.atomic_text(node, steps)
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, steps, "a constraint is 'leftOperand operator rightOperand', "
                            "a mapping, or and:/or:/xone:/andSequence: with a list")
        keys = [self.text(key, steps) for key, _ in node.value]
        if len(keys) == 1 and keys[0] in _LOGICAL:
            kind, members_node = keys[0], node.value[0][1]
            members = self.sequence(members_node, (*steps, kind))
            if not members:
                raise self.fail(node, steps, f"'{kind}' needs at least one constraint")
            return {kind: [self.constraint(m, (*steps, kind, i)) for i, m in enumerate(members)]}
        members_by_key = self.mapping(node, steps, _ATOMIC_KEYS)
        missing = [key for key in _ATOMIC_KEYS if key not in members_by_key]
        if missing:
            raise self.fail(node, steps, f"constraint needs {', '.join(missing)}")
        for key in _ATOMIC_KEYS:
            self.lines[(*steps, key)] = members_by_key[key].start_mark.line + 1
        left = self.text(members_by_key["leftOperand"], steps)
        operator = self.operator(self.text(members_by_key["operator"], steps), node, steps)
        right_node = members_by_key["rightOperand"]
        right: str | list[str] = (
            [self.text(item, steps) for item in self.sequence(right_node, steps)]
            if isinstance(right_node, yaml.SequenceNode) else self.text(right_node, steps))
        return {"leftOperand": left, "operator": operator, "rightOperand": right}

    def atomic_text(self, node: yaml.ScalarNode, steps: Steps) -> dict[str, Any]:
        """``leftOperand operator rightOperand`` from one string."""
        parts = str(node.value).strip().split(None, 2)
        if len(parts) != 3:
            raise self.fail(node, steps, f"expected 'leftOperand operator rightOperand', "
                            f"got {node.value!r}")
        left, operator, right_text = parts
        operator = self.operator(operator, node, steps)
        for key in _ATOMIC_KEYS:
            self.lines[(*steps, key)] = node.start_mark.line + 1
        return {"leftOperand": left, "operator": operator,
                "rightOperand": self.right_operand(right_text, node, steps)}

    def right_operand(self, text: str, node: yaml.Node, steps: Steps) -> str | list[str]:
        if text.startswith("["):
            if not text.endswith("]"):
                raise self.fail(node, steps, f"list right operand must end with ']': {text!r}")
            items = [_unquote(item.strip()) for item in text[1:-1].split(",") if item.strip()]
            if not items:
                raise self.fail(node, steps, "list right operand is empty")
            return items
        return _unquote(text)

    def operator(self, text: str, node: yaml.Node, steps: Steps) -> str:
        operator = text.removeprefix("odrl:")
        if operator not in _OPERATORS:
            raise self.fail(node, steps, f"unknown operator '{text}' "
                            f"(one of {', '.join(sorted(_OPERATORS))})")
        return operator

    # --- node access ---------------------------------------------------------------------

    def mapping(self, node: yaml.Node | None, steps: Steps,
                allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
        """The members of a mapping node, keyed by text; unknown or repeated keys fail."""
        if not isinstance(node, yaml.MappingNode):
            what = "the policy" if not steps else "a rule" if len(steps) % 2 == 0 else "this"
            raise self.fail(node, steps, f"{what} must be a mapping")
        self.lines[steps] = node.start_mark.line + 1
        members: dict[str, yaml.Node] = {}
        for key_node, value in node.value:
            key = self.text(key_node, steps)
            if key not in allowed:
                raise self.fail(key_node, steps, f"unknown key '{key}' "
                                f"(expected one of {', '.join(allowed)})")
            if key in members:
                raise self.fail(key_node, steps, f"key '{key}' appears twice")
            members[key] = value
            self.lines[(*steps, _ODRL_KEY.get(key, key))] = key_node.start_mark.line + 1
        return members

    def either(self, members: dict[str, yaml.Node], one: str, other: str, node: yaml.Node,
               steps: Steps) -> yaml.Node | None:
        if one in members and other in members:
            raise self.fail(node, steps, f"use '{one}' or '{other}', not both")
        return members.get(one, members.get(other))

    def sequence(self, node: yaml.Node, steps: Steps) -> list[yaml.Node]:
        """A list node's items; a single mapping or scalar stands for a one-item list."""
        self.lines.setdefault(steps, node.start_mark.line + 1)
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        return [node]

    def text(self, node: yaml.Node, steps: Steps) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, steps, "expected a single value, not a list or mapping")
        return str(node.value)


_ODRL_KEY = {"constraints": "constraint", "duties": "duty", "id": "@id"}
_QUOTED = re.compile(r'"(.*)"|\'(.*)\'')


def _unquote(text: str) -> str:
    m = _QUOTED.fullmatch(text)
    return text if m is None else m.group(1) if m.group(1) is not None else m.group(2)

