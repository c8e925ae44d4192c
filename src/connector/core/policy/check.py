"""Lint one policy file for ``connector policy check`` (and a git pre-commit hook).

Finds what would make the policy unparsable, undecidable or pointless, each as a ``Problem``
with a 1-based line: JSON syntax; structure (``parse_policy``'s errors); left operands the
engine does not enforce (evaluation would deny); right operands of the wrong type; operators
that make no sense for a left operand; and rules that can never apply (``dateTime lt A`` with
``dateTime gt B``, B ≥ A, in one conjunctive rule; ``count lt 0``; a prohibition without
constraints, which under EDC semantics never denies).

YAML files (the compact form, ``compact``) are compiled first; a compile error is one problem
on its line, and the compiled policy gets the same checks, placed by the compiler's line map.

Lines: the problem's JSON path is followed through the text with a small scanner that only
runs when there is a problem, so a clean file costs one ``json.loads`` and one parse.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias

from connector.core.consent import PURPOSE_FORM
from connector.core.errors import Problem
from connector.core.policy.compact import YamlPolicyError, compile_with_lines
from connector.core.policy.model import (
    USAGE_OPERANDS,
    AtomicConstraint,
    Constraint,
    Invalid,
    LeftOperand,
    LogicalConstraint,
    LogicalKind,
    Operator,
    PolicySyntaxError,
    Step,
    as_list,
    compact_term,
    format_path,
    get_key,
    parse_action,
    parse_constraint,
)

Steps: TypeAlias = tuple[Step, ...]
# A finding before its line is known: where (path, optional key) and what.
Finding: TypeAlias = tuple[Steps, str | None, str]

_LIST_OPERATORS = frozenset({Operator.IS_ALL_OF, Operator.IS_ANY_OF, Operator.IS_NONE_OF})
_ORDER_OPERATORS = frozenset({Operator.LT, Operator.LTEQ, Operator.GT, Operator.GTEQ})
_SCALAR_OPERATORS = _ORDER_OPERATORS | {Operator.EQ, Operator.NEQ}
_TEXT_OPERANDS = frozenset({LeftOperand.PURPOSE, LeftOperand.SPATIAL, LeftOperand.MEMBERSHIP,
                            LeftOperand.PARTICIPANT_ID})
# delayPeriod means "at least this long after the agreement" (see constraints.py).
_DELAY_OPERATORS = frozenset({Operator.EQ, Operator.GTEQ, Operator.GT})
_ENFORCED_SET = frozenset(operand.value for operand in LeftOperand)
_ENFORCED = ", ".join(sorted(_ENFORCED_SET))


def check_policy_file(text: str, file: str) -> list[Problem]:
    """Problems of one policy file: YAML (``.yaml``/``.yml``, the compact form) or JSON."""
    return check_policy_document(text, file)


def check_policy_document(text: str, file: str) -> list[Problem]:
    """Problems of one policy document (``file`` labels them and, by its extension, says
    whether the text is the compact YAML form or ODRL JSON)."""
    if file.endswith((".yaml", ".yml")):
        return _check_yaml(text, file)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return [Problem(file, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})")]
    findings = list(_check_document(doc))
    locator = _Locator(text)
    problems = [Problem(file, locator.line(steps, key),
                        f"{format_path(steps)}: {message}" if steps else message)
                for steps, key, message in findings]
    return sorted(problems, key=lambda problem: problem.line)


def _check_yaml(text: str, file: str) -> list[Problem]:
    """Compile, then the same checks as JSON, placed on the YAML line each path came from."""
    try:
        doc, lines = compile_with_lines(text, file)
    except YamlPolicyError as exc:
        where = f"{format_path(exc.steps)}: " if exc.steps else ""
        return [Problem(file, exc.line, where + exc.detail)]
    problems = [Problem(file, _yaml_line(lines, (*steps, key) if key else steps),
                        f"{format_path(steps)}: {message}" if steps else message)
                for steps, key, message in _check_document(doc)]
    return sorted(problems, key=lambda problem: problem.line)


def _yaml_line(lines: dict[Steps, int], steps: Steps) -> int:
    """The line of ``steps``, else of its nearest recorded ancestor."""
    while steps and steps not in lines:
        steps = steps[:-1]
    return lines.get(steps, 1)


def _check_document(doc: Any) -> Iterator[Finding]:
    if not isinstance(doc, Mapping):
        yield (), None, "a policy must be a JSON object"
        return
    if get_key(doc, "permission") is None and get_key(doc, "prohibition") is None:
        # DSP 2025-1 contract schema: an Offer has at least one permission or prohibition.
        yield (), None, "policy has neither permission nor prohibition"
    for kind in ("permission", "prohibition", "obligation"):
        for i, rule in enumerate(as_list(get_key(doc, kind))):
            yield from _check_rule(rule, (kind, i), kind)


def _check_rule(obj: Any, steps: Steps, kind: str) -> Iterator[Finding]:
    if not isinstance(obj, Mapping):
        yield steps, None, "a rule must be a JSON object"
        return
    try:
        parse_action(obj, steps, allow_refinement=kind == "duty")
    except PolicySyntaxError as exc:
        yield exc.steps, exc.key, exc.detail
    parsed: list[tuple[Constraint, Steps]] = []
    for i, raw in enumerate(as_list(get_key(obj, "constraint"))):
        c_steps = (*steps, "constraint", i)
        try:
            parsed.append((parse_constraint(raw, c_steps), c_steps))
        except PolicySyntaxError as exc:
            yield exc.steps, exc.key, exc.detail
    for constraint, c_steps in parsed:
        yield from _check_constraint(constraint, c_steps)
    yield from _check_reachable(parsed, steps, kind)
    if kind == "permission":
        for j, duty in enumerate(as_list(get_key(obj, "duty"))):
            yield from _check_rule(duty, (*steps, "duty", j), "duty")


def _check_constraint(constraint: Constraint, steps: Steps) -> Iterator[Finding]:
    if isinstance(constraint, LogicalConstraint):
        for i, member in enumerate(constraint.constraints):
            yield from _check_constraint(member, (*steps, constraint.kind.value, i))
        return
    problem = _atomic_problem(constraint)
    if problem is not None:
        yield steps, problem[0], problem[1]


def _atomic_problem(c: AtomicConstraint) -> tuple[str, str] | None:
    """(key, message) for the first thing wrong with one atomic constraint."""
    left, operator = c.left_operand, c.operator
    if left not in _ENFORCED_SET:
        return "leftOperand", (f"unknown left operand '{left}': evaluation denies "
                               f"(enforced: {_ENFORCED})")
    if isinstance(c.value, Invalid):
        return "rightOperand", c.value.reason
    if operator in _LIST_OPERATORS and not isinstance(c.right_operand, tuple):
        return "rightOperand", f"{operator} needs a list right operand"
    if operator is Operator.IS_A and isinstance(c.right_operand, tuple):
        return "rightOperand", "isA needs a single right operand, not a list"
    if left == LeftOperand.DELAY_PERIOD and operator not in _DELAY_OPERATORS:
        return "operator", f"delayPeriod takes eq, gteq or gt, not {operator}"
    if left == LeftOperand.ELAPSED_TIME and operator not in _SCALAR_OPERATORS:
        return "operator", f"elapsedTime takes eq, neq, lt, lteq, gt or gteq, not {operator}"
    if left in USAGE_OPERANDS and isinstance(c.right_operand, tuple):
        return "rightOperand", f"{left} needs a single right operand, not a list"
    if left == LeftOperand.CONSENT and (operator is not Operator.EQ
                                        or not isinstance(c.value, str)
                                        or not PURPOSE_FORM.fullmatch(c.value)):
        return "rightOperand", ("consent takes eq and one purpose word (consent eq care), "
                                "docs/consent.md")
    if left in _TEXT_OPERANDS and operator in _ORDER_OPERATORS:
        return "operator", f"{operator} compares numbers or dateTimes; {left} is text"
    return None


# --- rules that can never apply ---------------------------------------------------------------


def _check_reachable(parsed: list[tuple[Constraint, Steps]], steps: Steps,
                     kind: str) -> Iterator[Finding]:
    if kind == "prohibition":
        if not parsed:
            yield steps, None, ("prohibition without constraints never applies (EDC semantics: "
                                "it never denies); add a constraint or remove it")
        # EDC reads a prohibition's constraints disjunctively: only an and-group is conjunctive.
        for constraint, c_steps in parsed:
            yield from _contradictions(list(_conjuncts(constraint, c_steps)))
        return
    atoms = [atom for constraint, c_steps in parsed for atom in _conjuncts(constraint, c_steps)]
    yield from _contradictions(atoms)


def _conjuncts(constraint: Constraint, steps: Steps) -> Iterator[tuple[AtomicConstraint, Steps]]:
    """Atomic constraints that must all hold together: the constraint, or its and-members."""
    if isinstance(constraint, AtomicConstraint):
        yield constraint, steps
    elif constraint.kind in (LogicalKind.AND, LogicalKind.AND_SEQUENCE):
        for i, member in enumerate(constraint.constraints):
            yield from _conjuncts(member, (*steps, constraint.kind.value, i))


# A bound: (value, strict, the constraint that set it or None for count's natural 0).
_Bound: TypeAlias = tuple[Any, bool, AtomicConstraint | None]


def _contradictions(atoms: list[tuple[AtomicConstraint, Steps]]) -> Iterator[Finding]:
    """Per ordered left operand, narrow an interval; report the constraint that empties it."""
    for operand in (LeftOperand.DATE_TIME, LeftOperand.COUNT):
        lower: _Bound | None = (0, False, None) if operand is LeftOperand.COUNT else None
        upper: _Bound | None = None
        for atom, steps in atoms:
            if atom.left_operand != operand or not _orderable(atom):
                continue
            lower, upper = _narrow(atom, lower, upper)
            if lower is not None and upper is not None and _empty(lower, upper):
                other = upper[2] if lower[2] is atom else lower[2]
                if other is None:
                    yield steps, None, f"{_head(atom)} can never hold: a count is never negative"
                else:
                    yield steps, None, (f"rule can never apply: {_head(other)} and {_head(atom)} "
                                        "cannot both hold")
                break


def _orderable(atom: AtomicConstraint) -> bool:
    ordered = atom.operator in _ORDER_OPERATORS or atom.operator is Operator.EQ
    return ordered and not isinstance(atom.value, Invalid | tuple)


def _narrow(atom: AtomicConstraint, lower: _Bound | None,
            upper: _Bound | None) -> tuple[_Bound | None, _Bound | None]:
    """The bounds after ``atom``: the tighter of old and new on each side."""
    value, operator = atom.value, atom.operator
    if operator in (Operator.GT, Operator.GTEQ, Operator.EQ):
        strict = operator is Operator.GT
        if lower is None or value > lower[0] or (value == lower[0] and strict):
            lower = (value, strict, atom)
    if operator in (Operator.LT, Operator.LTEQ, Operator.EQ):
        strict = operator is Operator.LT
        if upper is None or value < upper[0] or (value == upper[0] and strict):
            upper = (value, strict, atom)
    return lower, upper


def _empty(lower: _Bound, upper: _Bound) -> bool:
    """No value lies between the bounds."""
    return lower[0] > upper[0] or (lower[0] == upper[0] and (lower[1] or upper[1]))


def _head(atom: AtomicConstraint) -> str:
    return f"{atom.left_operand} {atom.operator} {atom.right_operand}"


# --- file:line --------------------------------------------------------------------------------


class _Locator:
    """Follows a JSON path (keys, indexes) through valid JSON text to a line number."""

    def __init__(self, text: str) -> None:
        self.text = text

    def line(self, steps: Steps, key: str | None) -> int:
        pos = self._skip_ws(0)
        for step in (*steps, key) if key else steps:
            found = self._child(pos, step)
            if found is None:
                break
            pos = found
        return self.text.count("\n", 0, pos) + 1

    def _child(self, pos: int, step: Step) -> int | None:
        opener = self.text[pos] if pos < len(self.text) else ""
        if opener == "{" and isinstance(step, str):
            return next((value for key, value in self._members(pos)
                         if compact_term(key) == step), None)
        if opener == "{":  # an index into a bare object (one-element array) or an @list
            wrapped = next((v for k, v in self._members(pos) if k in ("@list", "@set")), None)
            if wrapped is not None:
                return self._child(wrapped, step)
            return pos if step == 0 else None
        if opener == "[" and isinstance(step, int):
            return next((v for i, v in enumerate(self._elements(pos)) if i == step), None)
        return None

    def _members(self, pos: int) -> Iterator[tuple[str, int]]:
        """(key, value position) of each member of the object at ``pos``."""
        i = self._skip_ws(pos + 1)
        while i < len(self.text) and self.text[i] == '"':
            key_end = self._end_of_string(i)
            key = json.loads(self.text[i:key_end])
            value = self._skip_ws(self._skip_ws(key_end) + 1)  # past the ':'
            yield key, value
            i = self._next_item(value)

    def _elements(self, pos: int) -> Iterator[int]:
        i = self._skip_ws(pos + 1)
        while i < len(self.text) and self.text[i] != "]":
            yield i
            i = self._next_item(i)

    def _next_item(self, value: int) -> int:
        i = self._skip_ws(self._end_of_value(value))
        return self._skip_ws(i + 1) if i < len(self.text) and self.text[i] == "," else i

    def _skip_ws(self, i: int) -> int:
        while i < len(self.text) and self.text[i] in " \t\r\n":
            i += 1
        return i

    def _end_of_string(self, i: int) -> int:
        j = i + 1
        while True:
            j = self.text.index('"', j)
            backslashes = len(self.text[i + 1:j]) - len(self.text[i + 1:j].rstrip("\\"))
            if backslashes % 2 == 0:
                return j + 1
            j += 1

    def _end_of_value(self, i: int) -> int:
        text = self.text
        if text[i] == '"':
            return self._end_of_string(i)
        if text[i] not in "{[":
            while i < len(text) and text[i] not in ",}] \t\r\n":
                i += 1
            return i
        depth = 0
        while i < len(text):
            char = text[i]
            if char == '"':
                i = self._end_of_string(i)
                continue
            if char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return i
