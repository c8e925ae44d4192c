"""Constraints, judged against a context: the machinery both readings of a policy share
(EDC's in ``evaluate``, strict ODRL's in ``strict``). Pure, deterministic, no IO.

Theory of operation
-------------------
Each atomic constraint comes out as one of four outcomes:

* ``HOLDS`` / ``FAILS`` — the usual ODRL 2.2 satisfaction states. A value of the wrong type
  (``"abc" lt 5``) FAILS, with a note saying why.
* ``DEFERRED`` — a usage-only operand (``elapsedTime``, ``count``, ``delayPeriod``) before an
  agreement exists (CATALOG, NEGOTIATION scope). Traced as satisfied with the note "deferred
  to every data access"; it neither blocks a permission nor triggers a prohibition.
* ``ERROR`` — the constraint cannot be evaluated: unknown left operand, a claim or context
  value the consumer lacks, a right operand that cannot mean anything (``dateTime lt "abc"``).
  An ERROR anywhere denies, in every rule kind, inside every logical constraint: a policy
  term we cannot judge never passes silently (EDC fails "No evaluation function found" too).

Logical constraints combine outcomes in Kleene's three-valued logic with DEFERRED as
"unknown" and ERROR dominant. ``andSequence`` (ODRL 2.2 §2.5.3: all, in order): a stateless
check sees one instant, so it cannot tell *when* each member became true; it requires all
members to hold now, evaluated and traced in document order, and is otherwise ``and``.
Members are never short-circuited, so every ERROR surfaces and the trace is complete.

Size: the operator table and its documented meanings live next to the left-operand handlers
that use them, so the module runs a little over 400 lines; the rule-level readings are in
``evaluate`` and ``strict``.
"""

from __future__ import annotations

import operator as op
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from typing import Any

from connector.core.errors import PolicyError
from connector.core.policy.model import (
    USAGE_OPERANDS,
    AtomicConstraint,
    Constraint,
    Duration,
    Invalid,
    LeftOperand,
    LogicalKind,
    Operator,
    Value,
)


class Scope(StrEnum):
    """Where a decision is taken (EDC: catalog, contract.negotiation, transfer.process)."""

    CATALOG = "catalog"
    NEGOTIATION = "negotiation"
    TRANSFER = "transfer"


class DutyState(StrEnum):
    """What the state of the world says about one duty (strict ODRL only)."""

    FULFILLED = "fulfilled"
    PENDING = "pending"  # in force, not yet due: it may still be performed
    VIOLATED = "violated"


@dataclass(frozen=True, slots=True)
class EvaluationRequest:
    """Who asks to do what to which asset (W3C ODRL formal semantics: evaluation request).

    ``party_part_of`` and ``target_part_of`` are the party and asset collections the state of
    the world places them in. ``None`` fields match any rule.
    """

    action: str | None = None
    target: str | None = None
    party: str | None = None
    party_part_of: frozenset[str] = frozenset()
    target_part_of: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """Everything a decision may depend on; time comes from the caller.

    ``request`` and ``duty_states`` (keyed by duty ``@id``, then by duty action) are read by
    the strict-ODRL mode only.
    """

    scope: Scope
    now: datetime  # timezone-aware UTC
    participant_id: str | None  # the consumer's verified DID
    claims: Mapping[str, Any]  # verified attributes: membership, purpose, country, ...
    agreement_time: datetime | None = None  # when the agreement was made (TRANSFER scope)
    use_count: int | None = None  # uses so far, INCLUDING the one being decided (TRANSFER)
    request: EvaluationRequest | None = None
    duty_states: Mapping[str, DutyState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("now", "agreement_time"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                raise PolicyError(f"PolicyContext.{name} must be timezone-aware")


class Outcome(Enum):
    """How one constraint came out (see the module docstring)."""

    HOLDS = "holds"
    FAILS = "fails"
    DEFERRED = "deferred"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ConstraintResult:
    """One evaluated constraint. Logical constraints have ``left_operand == ""`` and their
    kind as ``operator``. ``path`` says where it sits in the policy; ``blocking`` marks the
    results that made the decision deny."""

    left_operand: str
    operator: str
    right_operand: Any
    actual: Any
    satisfied: bool
    note: str
    path: str = ""
    blocking: bool = False

    @property
    def head(self) -> str:
        """``count lteq 100``; a logical constraint's kind alone."""
        if not self.left_operand:
            return self.operator
        return f"{self.left_operand} {self.operator} {_show(self.right_operand)}"

    @property
    def reason(self) -> str:
        """A human line: ``count lteq 100 failed: 101 uses``."""
        if self.satisfied and self.path.startswith("prohibition"):
            return f"prohibited: {self.head} holds: {self.note}"
        return f"{self.head} failed: {self.note}"


@dataclass(frozen=True, slots=True)
class RuleReport:
    """One rule's activation: a permission that holds, a prohibition that is triggered.

    ``note`` says why a rule does not apply to the request (strict ODRL), else is empty.
    """

    path: str
    id: str | None
    active: bool
    note: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict, the trace of every evaluated constraint in document order, and each
    rule's activation."""

    allowed: bool
    trace: tuple[ConstraintResult, ...]
    rules: tuple[RuleReport, ...] = ()

    @property
    def reasons(self) -> list[str]:
        """One human line per constraint (or unmatched rule) that made the decision deny."""
        lines = [result.reason for result in self.trace if result.blocking]
        if not self.allowed and not lines:
            lines = [f"{r.path}: {r.note}" for r in self.rules if r.note]
            lines = lines or ["no permission applies (strict ODRL: what is not permitted is not)"]
        return lines


def enforced_operands() -> frozenset[str]:
    """Left operands this engine technically enforces; any other denies."""
    return frozenset(operand.value for operand in LeftOperand)


# --- rule kinds -------------------------------------------------------------------------------


def must_hold(constraints: tuple[Constraint, ...], path: str, ctx: PolicyContext,
              trace: list[ConstraintResult]) -> bool:
    """Permission, duty, obligation: every constraint must hold (or be deferred)."""
    return _none_ends_in(constraints, path, ctx, trace, _FAILING, Outcome.FAILS)


def all_hold(constraints: tuple[Constraint, ...], path: str, ctx: PolicyContext,
             trace: list[ConstraintResult]) -> bool:
    """Strict-ODRL prohibition: triggered when ALL constraints hold (an ERROR counts as
    holding: a term we cannot judge never lifts a prohibition). Blocking marks go to the
    constraints that hold when triggered."""
    nodes = [_evaluate(c, f"{path}.constraint[{i}]", ctx) for i, c in enumerate(constraints)]
    triggered = all(n.outcome in (Outcome.HOLDS, Outcome.ERROR) for n in nodes)
    for node in nodes:
        culprits = set(map(id, _culprits(node, Outcome.HOLDS))) if triggered else set()
        _emit(node, culprits, trace)
    return triggered


def in_force(constraints: tuple[Constraint, ...], path: str, ctx: PolicyContext,
             trace: list[ConstraintResult]) -> bool:
    """Strict-ODRL duty: in force unless some constraint FAILS (one we cannot judge leaves
    it in force: demanding more never widens a permission). Traced without blocking marks."""
    nodes = [_evaluate(c, f"{path}.constraint[{i}]", ctx) for i, c in enumerate(constraints)]
    for node in nodes:
        _emit(node, set(), trace)
    return all(node.outcome is not Outcome.FAILS for node in nodes)


def unblock(results: list[ConstraintResult]) -> list[ConstraintResult]:
    """The same results with no blocking marks (a permission that lost to an alternative)."""
    return [replace(r, blocking=False) if r.blocking else r for r in results]


def none_hold(constraints: tuple[Constraint, ...], path: str, ctx: PolicyContext,
              trace: list[ConstraintResult]) -> bool:
    """EDC prohibition: not triggered unless some top-level constraint holds (an ERROR counts
    as holding). Blocking marks go to the constraints that hold."""
    return _none_ends_in(constraints, path, ctx, trace, _HOLDING, Outcome.HOLDS)


_FAILING = frozenset({Outcome.FAILS, Outcome.ERROR})
_HOLDING = frozenset({Outcome.HOLDS, Outcome.ERROR})


def _none_ends_in(constraints: tuple[Constraint, ...], path: str, ctx: PolicyContext,
                  trace: list[ConstraintResult], ends: frozenset[Outcome],
                  culprit: Outcome) -> bool:
    """Judge and trace each constraint: True when none's outcome is in ``ends``; the blocking
    marks go to the ``culprit`` atoms of those whose outcome is."""
    clear = True
    for i, constraint in enumerate(constraints):
        node = _evaluate(constraint, f"{path}.constraint[{i}]", ctx)
        hit = node.outcome in ends
        clear &= not hit
        _emit(node, set(map(id, _culprits(node, culprit))) if hit else set(), trace)
    return clear


# --- constraint trees -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    """An evaluated constraint before it is known whether it blocks."""

    outcome: Outcome
    result: ConstraintResult
    kind: LogicalKind | None = None
    children: tuple[_Node, ...] = ()


def _evaluate(constraint: Constraint, path: str, ctx: PolicyContext) -> _Node:
    if isinstance(constraint, AtomicConstraint):
        outcome, actual, note = _atomic(constraint, ctx)
        satisfied = outcome in (Outcome.HOLDS, Outcome.DEFERRED)
        return _Node(outcome, ConstraintResult(
            constraint.left_operand, constraint.operator, constraint.right_operand,
            actual, satisfied, note, path))
    kind = constraint.kind
    children = tuple(_evaluate(member, f"{path}.{kind}[{i}]", ctx)
                     for i, member in enumerate(constraint.constraints))
    outcome = _COMBINE[kind]([child.outcome for child in children])
    n_hold = sum(child.outcome is Outcome.HOLDS for child in children)
    summary = "; ".join(f"{c.result.head}: {c.result.note}" for c in children)
    note = f"{n_hold} of {len(children)} members hold — {summary}"
    heads = tuple(child.result.head for child in children)
    satisfied = outcome in (Outcome.HOLDS, Outcome.DEFERRED)
    return _Node(outcome, ConstraintResult("", kind, heads, n_hold, satisfied, note, path),
                 kind, children)


def _kleene(outcomes: list[Outcome], decisive: Outcome, otherwise: Outcome) -> Outcome:
    """ERROR dominates; then the outcome that decides alone (FAILS for ``and``, HOLDS for
    ``or``); then DEFERRED, the unknown; else ``otherwise``."""
    for outcome in (Outcome.ERROR, decisive, Outcome.DEFERRED):
        if outcome in outcomes:
            return outcome
    return otherwise


def _all(outcomes: list[Outcome]) -> Outcome:
    return _kleene(outcomes, Outcome.FAILS, Outcome.HOLDS)


def _any(outcomes: list[Outcome]) -> Outcome:
    return _kleene(outcomes, Outcome.HOLDS, Outcome.FAILS)


def _exactly_one(outcomes: list[Outcome]) -> Outcome:
    if Outcome.ERROR in outcomes:
        return Outcome.ERROR
    holding = outcomes.count(Outcome.HOLDS)
    if holding > 1:
        return Outcome.FAILS
    if Outcome.DEFERRED in outcomes:  # a deferred member may still make it 0 or 2
        return Outcome.DEFERRED
    return Outcome.HOLDS if holding == 1 else Outcome.FAILS


_COMBINE: dict[LogicalKind, Callable[[list[Outcome]], Outcome]] = {
    LogicalKind.AND: _all,
    LogicalKind.OR: _any,
    LogicalKind.XONE: _exactly_one,
    LogicalKind.AND_SEQUENCE: _all,  # stateless: all members now, in document order
}


def _culprits(node: _Node, against: Outcome) -> Iterator[_Node]:
    """The nodes that explain why ``node`` came out ``against`` the rule (or as ERROR)."""
    if node.outcome is Outcome.ERROR:
        yield from (n for n in _atoms(node) if n.outcome is Outcome.ERROR)
    elif node.kind is None:
        yield node
    elif node.kind in (LogicalKind.AND, LogicalKind.AND_SEQUENCE) or against is Outcome.HOLDS:
        for child in node.children:
            if child.outcome is against:
                yield from _culprits(child, against)
    else:  # a failed or/xone is explained by the combination, not by one member
        yield node


def _atoms(node: _Node) -> Iterator[_Node]:
    if node.kind is None:
        yield node
    for child in node.children:
        yield from _atoms(child)


def _emit(node: _Node, blocking: set[int], trace: list[ConstraintResult]) -> None:
    """Append ``node`` and its members, pre-order, marking the blocking ones."""
    result = node.result
    if id(node) in blocking:
        result = ConstraintResult(result.left_operand, result.operator, result.right_operand,
                                  result.actual, result.satisfied, result.note, result.path, True)
    trace.append(result)
    for child in node.children:
        _emit(child, blocking, trace)


# --- atomic constraints -----------------------------------------------------------------------

_Verdict = tuple[Outcome, Any, str]
_DEFERRED: _Verdict = (Outcome.DEFERRED, None, "deferred to every data access")
_NO_AGREEMENT = "no agreement time in the context: {} cannot be evaluated"


def _atomic(c: AtomicConstraint, ctx: PolicyContext) -> _Verdict:
    handler = _HANDLERS.get(c.left_operand)
    if handler is None:
        return Outcome.ERROR, None, f"unknown left operand '{c.left_operand}': cannot be evaluated"
    if isinstance(c.value, Invalid):
        return Outcome.ERROR, None, f"{c.value.reason}: cannot be evaluated"
    if c.left_operand in USAGE_OPERANDS and ctx.scope is not Scope.TRANSFER:
        return _DEFERRED
    return handler(c, c.value, ctx)


def _date_time(c: AtomicConstraint, value: Value, ctx: PolicyContext) -> _Verdict:
    # ODRL 2.2: dateTime is "the date (and optional time and timezone) of exercising the action".
    return _judge(ctx.now, c.operator, value, f"now is {_iso(ctx.now)}")


def _count(c: AtomicConstraint, value: Value, ctx: PolicyContext) -> _Verdict:
    if ctx.use_count is None:
        return Outcome.ERROR, None, "no use count in the context: count cannot be evaluated"
    n = ctx.use_count
    return _judge(n, c.operator, value, f"{n} use" if n == 1 else f"{n} uses")


def _elapsed_time(c: AtomicConstraint, value: Value, ctx: PolicyContext) -> _Verdict:
    # elapsed op D  <=>  now op (agreement_time + D): exact even for months and years.
    if ctx.agreement_time is None:
        return Outcome.ERROR, None, _NO_AGREEMENT.format("elapsedTime")
    elapsed = ctx.now - ctx.agreement_time
    note = f"{_span(elapsed)} elapsed since the agreement"
    if not isinstance(value, Duration) or c.operator not in _SCALAR_OPS:
        return Outcome.FAILS, elapsed, f"type mismatch: elapsedTime {c.operator} needs one duration"
    holds = _SCALAR_OPS[c.operator](ctx.now, value.after(ctx.agreement_time))
    return (Outcome.HOLDS if holds else Outcome.FAILS), elapsed, note


def _delay_period(c: AtomicConstraint, value: Value, ctx: PolicyContext) -> _Verdict:
    # ODRL 2.2: a delay before the action may be exercised, counted here from the agreement.
    if ctx.agreement_time is None:
        return Outcome.ERROR, None, _NO_AGREEMENT.format("delayPeriod")
    elapsed = ctx.now - ctx.agreement_time
    reached = _DELAY_OPS.get(c.operator)
    if not isinstance(value, Duration) or reached is None:
        return Outcome.FAILS, elapsed, "type mismatch: delayPeriod needs eq, gteq or gt, a duration"
    start = value.after(ctx.agreement_time)
    note = f"{_span(elapsed)} elapsed since the agreement; use allowed from {_iso(start)}"
    return (Outcome.HOLDS if reached(ctx.now, start) else Outcome.FAILS), elapsed, note


def _claim(key: str) -> Callable[[AtomicConstraint, Value, PolicyContext], _Verdict]:
    def judge_claim(c: AtomicConstraint, value: Value, ctx: PolicyContext) -> _Verdict:
        actual = _claim_value(ctx.claims.get(key))
        if actual is None:
            return Outcome.ERROR, None, f"the consumer has no '{key}' claim"
        return _judge(actual, c.operator, value, f"the consumer's {key} is {_show(actual)}")
    return judge_claim


def _participant_id(c: AtomicConstraint, value: Value, ctx: PolicyContext) -> _Verdict:
    if not ctx.participant_id:
        return Outcome.ERROR, None, "the consumer has no verified participant id"
    pid = ctx.participant_id
    return _judge(pid, c.operator, value, f"the consumer is {pid}")


def _consent(c: AtomicConstraint, value: Value, ctx: PolicyContext) -> _Verdict:
    # docs/consent.md: the constraint holds for the agreement as a whole; the data plane then
    # serves a record only when its subject's consent covers this consumer and purpose.
    if c.operator is not Operator.EQ or not isinstance(value, str):
        return Outcome.FAILS, None, "type mismatch: consent takes eq and one purpose"
    return (Outcome.HOLDS, value, f"each record is served only if its subject consents to "
            f"this consumer for {value} (checked on every record streamed)")


def _claim_value(raw: Any) -> Value | None:
    """A claim as a scalar or a tuple; None when absent or empty (a claim the consumer lacks)."""
    if isinstance(raw, list | tuple | set | frozenset):
        items = tuple(sorted(str(item) for item in raw))  # sorted: deterministic notes
        return items or None
    if isinstance(raw, bool) or raw is None or raw == "":
        return None
    return raw if isinstance(raw, str | int | float) else str(raw)


_HANDLERS: dict[str, Callable[[AtomicConstraint, Value, PolicyContext], _Verdict]] = {
    LeftOperand.DATE_TIME: _date_time,
    LeftOperand.ELAPSED_TIME: _elapsed_time,
    LeftOperand.COUNT: _count,
    LeftOperand.DELAY_PERIOD: _delay_period,
    LeftOperand.PURPOSE: _claim("purpose"),
    LeftOperand.SPATIAL: _claim("country"),
    LeftOperand.MEMBERSHIP: _claim("membership"),
    LeftOperand.PARTICIPANT_ID: _participant_id,
    LeftOperand.CONSENT: _consent,
}


# --- operators --------------------------------------------------------------------------------
#
# Meanings (ODRL 2.2 §2.5.1 names them; these are this engine's precise readings). Sets are
# JSON lists; a scalar on the other side counts as a one-element set.
#   eq / neq       two scalars of the same type are (not) equal; if either side is a set, the
#                  two sets are (not) equal. Different scalar types: a type mismatch, so FAILS
#                  for both eq and neq.
#   lt lteq gt gteq  two numbers or two dateTimes; anything else is a type mismatch.
#   isA            the right operand (one value) is among the actual values: no class
#                  hierarchy is known, so "member isA gold" means the claim names "gold".
#   hasPart        actual ⊇ right;        isPartOf  actual ⊆ right
#   isAllOf        actual ⊇ right (EDC/Tractus-X "containsAll")
#   isAnyOf        actual ∩ right ≠ ∅;    isNoneOf  actual ∩ right = ∅

_SCALAR_OPS: dict[Operator, Callable[[Any, Any], bool]] = {
    Operator.EQ: op.eq, Operator.NEQ: op.ne, Operator.LT: op.lt, Operator.LTEQ: op.le,
    Operator.GT: op.gt, Operator.GTEQ: op.ge,
}
_ORDER_OPS = frozenset({Operator.LT, Operator.LTEQ, Operator.GT, Operator.GTEQ})
_DELAY_OPS: dict[Operator, Callable[[Any, Any], bool]] = {
    Operator.EQ: op.ge, Operator.GTEQ: op.ge, Operator.GT: op.gt,
}
_SET_OPS: dict[Operator, Callable[[frozenset[Any], frozenset[Any]], bool]] = {
    Operator.HAS_PART: frozenset.issuperset,
    Operator.IS_ALL_OF: frozenset.issuperset,
    Operator.IS_PART_OF: frozenset.issubset,
    Operator.IS_ANY_OF: lambda a, r: not a.isdisjoint(r),
    Operator.IS_NONE_OF: frozenset.isdisjoint,
}


def compare(actual: Value, operator: Operator, right: Value) -> bool | str:
    """``actual operator right``: True or False, or a string saying why they cannot compare."""
    set_op = _SET_OPS.get(operator)
    if set_op is not None:
        return set_op(_as_set(actual), _as_set(right))
    if operator is Operator.IS_A:
        if isinstance(right, tuple):
            return f"isA needs one value, not the set {_show(right)}"
        return right in _as_set(actual)
    if isinstance(actual, tuple) or isinstance(right, tuple):
        if operator in _ORDER_OPS:
            return f"{operator} compares two numbers or two dateTimes, not a set"
        same = _as_set(actual) == _as_set(right)
        return same if operator is Operator.EQ else not same
    kind_a, kind_r = _kind(actual), _kind(right)
    if kind_a != kind_r:
        return f"{operator} cannot compare {kind_a} {_show(actual)} with {kind_r} {_show(right)}"
    if operator in _ORDER_OPS and kind_a not in ("number", "dateTime"):
        return f"{operator} compares two numbers or two dateTimes, not {kind_a}s"
    return _SCALAR_OPS[operator](actual, right)


def _judge(actual: Value, operator: Operator, right: Value, note: str) -> _Verdict:
    verdict = compare(actual, operator, right)
    if isinstance(verdict, str):
        return Outcome.FAILS, actual, f"type mismatch: {verdict}"
    return (Outcome.HOLDS if verdict else Outcome.FAILS), actual, note


def _as_set(value: Value) -> frozenset[Any]:
    return frozenset(value) if isinstance(value, tuple) else frozenset((value,))


_KINDS: dict[type, str] = {
    str: "string", int: "number", float: "number", bool: "boolean", datetime: "dateTime",
    Duration: "duration",
}


def _kind(value: Any) -> str:
    kind = _KINDS.get(type(value))
    if kind is None:  # subclasses: rare, so checked the slow way
        kind = next((k for t, k in _KINDS.items() if isinstance(value, t)), type(value).__name__)
    return kind


# --- text -------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, datetime):
        return _iso(value)
    return str(value)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _span(delta: timedelta) -> str:
    return str(delta).replace(", 0:00:00", "")
