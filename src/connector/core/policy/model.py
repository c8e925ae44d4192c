"""Typed ODRL 2.2 policy model, parsed from the compact JSON(-LD) form DSP 2025-1 carries.

Theory of operation
-------------------
``parse_policy`` turns one decoded JSON object (an ``Offer``, ``Agreement`` or ``Set``) into
frozen values: a ``Policy`` holds ``permission``, ``prohibition`` and ``obligation`` rules; a
``Rule`` holds an action, constraints and (permissions only) duties; a constraint is atomic
(``leftOperand operator rightOperand``) or logical (exactly one of ``and``, ``or``, ``xone``,
``andSequence``, ODRL 2.2 §2.5.3).

Input is read leniently, as JSON-LD compaction may produce it: keys and terms may be written
``permission``, ``odrl:permission`` or as the full ODRL IRI; a one-element array may be a bare
object; terms may be wrapped as ``{"@id": ...}`` and literals as ``{"@value": ..., "@type": ...}``.
ODRL terms are stored in compact form (``count``, ``eq``, ``use``); other IRIs stay as written.

Structure errors raise ``PolicySyntaxError`` (a ``PolicyError``) naming the JSON path, e.g.
``permission[0].constraint[1]: unknown operator 'foo'``. Content the evaluator can judge is
*not* a parse error: an unknown left operand or a right operand of the wrong type parses, and
evaluation denies with a note. Right operands of the typed left operands (``dateTime``,
``elapsedTime``, ``delayPeriod``, ``count``) are converted here, once, so that evaluation does
no string parsing. (The xsd:dateTime/xsd:duration readers live here, with the values they
build, which is why this module is a little over 400 lines.)
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, TypeAlias

from connector.core.errors import PolicyError
from connector.core.messages import EDC_NS, MAX_ID_LENGTH

ODRL_NS = "http://www.w3.org/ns/odrl/2/"
XSD_NS = "http://www.w3.org/2001/XMLSchema#"


class Operator(StrEnum):
    """ODRL 2.2 §2.5.1 operators, as listed in the DSP 2025-1 contract schema."""

    EQ = "eq"
    NEQ = "neq"
    LT = "lt"
    LTEQ = "lteq"
    GT = "gt"
    GTEQ = "gteq"
    IS_A = "isA"
    HAS_PART = "hasPart"
    IS_PART_OF = "isPartOf"
    IS_ALL_OF = "isAllOf"
    IS_ANY_OF = "isAnyOf"
    IS_NONE_OF = "isNoneOf"


class LogicalKind(StrEnum):
    """ODRL 2.2 §2.5.3 logical constraint operands."""

    AND = "and"
    OR = "or"
    XONE = "xone"
    AND_SEQUENCE = "andSequence"


class LeftOperand(StrEnum):
    """The left operands this engine enforces (ODRL 2.2 Vocabulary, leftOperand)."""

    DATE_TIME = "dateTime"
    ELAPSED_TIME = "elapsedTime"
    COUNT = "count"
    DELAY_PERIOD = "delayPeriod"
    PURPOSE = "purpose"
    SPATIAL = "spatial"
    MEMBERSHIP = "membership"
    PARTICIPANT_ID = "participantId"
    # Ours: `consent eq PURPOSE` puts each record under its subject's consent (core/consent.py)
    CONSENT = "consent"


# Ours: not ODRL terms (ODRL 2.2 has purpose, count, dateTime, ... but no membership).
_OWN_OPERANDS = frozenset({LeftOperand.MEMBERSHIP, LeftOperand.PARTICIPANT_ID,
                           LeftOperand.CONSENT})

# Known only once an agreement exists; checked on every data access (TRANSFER scope).
USAGE_OPERANDS = frozenset({LeftOperand.ELAPSED_TIME, LeftOperand.COUNT, LeftOperand.DELAY_PERIOD})


@dataclass(frozen=True, slots=True)
class Duration:
    """An xsd:duration, kept as a calendar part (months) and an exact part.

    Years and months have no fixed length, so a duration is only ever *added to an instant*
    (``after``), never converted to seconds: ``P1M`` after 31 January is the last of February.
    """

    months: int
    exact: timedelta
    text: str

    def after(self, start: datetime) -> datetime:
        """The instant this duration after ``start`` (months first, then days and time)."""
        try:
            return _add_months(start, self.months) + self.exact
        except (OverflowError, ValueError):  # beyond year 9999: never reached
            return datetime.max.replace(tzinfo=UTC) if self.months >= 0 else datetime.min.replace(
                tzinfo=UTC)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Invalid:
    """A right operand that cannot mean anything for its left operand; evaluation denies."""

    reason: str


Scalar: TypeAlias = str | int | float
RightOperand: TypeAlias = Scalar | tuple[Scalar, ...]
Atom: TypeAlias = str | int | float | datetime | Duration
Value: TypeAlias = Atom | tuple[Atom, ...]


@dataclass(frozen=True, slots=True)
class AtomicConstraint:
    """``left_operand operator right_operand``; ``value`` is the right operand, typed.

    ``left_operand`` is stored compact (``count``) when it is an ODRL term; ``value`` is computed
    from the right operand once, at construction (a datetime for ``dateTime``, ...).
    """

    left_operand: str
    operator: Operator
    right_operand: RightOperand
    value: Value | Invalid = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "left_operand", compact_operand(self.left_operand))
        object.__setattr__(self, "operator", Operator(compact_term(self.operator)))
        object.__setattr__(self, "value", typed_operand(self.left_operand, self.right_operand))


@dataclass(frozen=True, slots=True)
class LogicalConstraint:
    """``kind`` over ``constraints`` (ODRL 2.2 §2.5.3)."""

    kind: LogicalKind
    constraints: tuple[Constraint, ...]


Constraint: TypeAlias = AtomicConstraint | LogicalConstraint


@dataclass(frozen=True, slots=True)
class Rule:
    """A permission, prohibition, obligation or duty. Duties belong to permissions only.

    ``target`` and ``assignee`` are the rule's own (ODRL 2.2 §2.2); only the strict-ODRL mode
    matches them against an evaluation request. ``refinements`` are read on duties only: they
    say what performing the duty means, which the state of the world reports (see evaluate).
    ``id`` names the rule for such reports and for traces; it takes no part in equality.
    """

    action: str
    constraints: tuple[Constraint, ...] = ()
    duties: tuple[Rule, ...] = ()
    target: str | None = None
    assignee: str | None = None
    refinements: tuple[Constraint, ...] = ()
    id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Policy:
    """An ODRL policy: its id, policy-level target and assignee, and its rules in order."""

    id: str | None = None
    permissions: tuple[Rule, ...] = ()
    prohibitions: tuple[Rule, ...] = ()
    obligations: tuple[Rule, ...] = ()
    target: str | None = None
    assignee: str | None = None


Step: TypeAlias = str | int


def format_path(steps: Sequence[Step]) -> str:
    """``("permission", 0, "constraint", 1)`` -> ``permission[0].constraint[1]``."""
    out = ""
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out or "policy"


class PolicySyntaxError(PolicyError):
    """A policy that cannot be parsed. ``steps`` (and ``key``) say where, for file:line."""

    def __init__(self, steps: Sequence[Step], detail: str, key: str | None = None) -> None:
        super().__init__(f"{format_path(steps)}: {detail}")
        self.steps = tuple(steps)
        self.detail = detail
        self.key = key


# --- terms and keys ---------------------------------------------------------------------------


def compact_operand(term: str) -> str:
    """A left operand in compact form: ODRL terms as ``compact_term``; and one of our own
    operands written in EDC's vocabulary (``edc:membership``, ``https://w3id.org/edc/v0.0.1/
    ns/membership``) as that operand. Our catalogue writes those without a namespace, and EDC's
    management API, posting under ``{"@vocab": edc}``, hands them back in its own."""
    term = compact_term(term)
    for prefix in (EDC_NS, "edc:"):
        if term.startswith(prefix) and term[len(prefix):] in _OWN_OPERANDS:
            return term[len(prefix):]
    return term


def compact_term(term: str) -> str:
    """``odrl:count`` and ``http://www.w3.org/ns/odrl/2/count`` -> ``count``; others as is."""
    if term.startswith(ODRL_NS):
        return term[len(ODRL_NS):]
    if term.startswith("odrl:"):
        return term[5:]
    return term


def get_key(obj: Mapping[str, Any], key: str) -> Any:
    """``obj[key]``, also found under ``odrl:key`` or the full ODRL IRI; None if absent."""
    value = obj.get(key)
    if value is None:
        value = obj.get("odrl:" + key)
    if value is None:
        value = obj.get(ODRL_NS + key)
    return value


def as_list(value: Any) -> list[Any]:
    """JSON-LD containers: absent -> [], a bare value -> [value], ``{"@list": [...]}`` -> list."""
    if value is None:
        return []
    if isinstance(value, Mapping) and ("@list" in value or "@set" in value):
        value = value.get("@list", value.get("@set"))
    return list(value) if isinstance(value, list | tuple) else [value]


def _term(value: Any) -> str | None:
    """A term written as a string or ``{"@id": ...}``, compacted; None if neither."""
    if isinstance(value, Mapping):
        value = value.get("@id")
    return compact_term(value) if isinstance(value, str) and value else None


# --- literals ---------------------------------------------------------------------------------

_NUMERIC_TYPES = frozenset({"integer", "int", "long", "short", "nonNegativeInteger",
                            "positiveInteger", "decimal", "double", "float"})


def _literal(value: Any, steps: Sequence[Step]) -> Scalar:
    """One right-operand literal: string, number, ``{"@value"}`` or ``{"@id"}`` (as its IRI)."""
    if isinstance(value, Mapping):
        if "@id" in value and isinstance(value["@id"], str):
            return str(value["@id"])
        if "@value" not in value:
            raise PolicySyntaxError(steps, "right operand object needs '@value' or '@id'",
                                    "rightOperand")
        xsd_type = str(value.get("@type", "")).removeprefix("xsd:").removeprefix(XSD_NS)
        value = value["@value"]
        if xsd_type in _NUMERIC_TYPES and isinstance(value, str):
            value = _number(value)
    if isinstance(value, bool):  # JSON true/false: keep the xsd:boolean lexical form
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return value
    raise PolicySyntaxError(steps, f"right operand {value!r} is not a string, number or list",
                            "rightOperand")


def _number(text: str) -> Scalar:
    """A numeric lexical form as int or float; the text itself if it is not a number."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def parse_right_operand(value: Any, steps: Sequence[Step]) -> RightOperand:
    """A right operand as a scalar or a tuple of scalars (ODRL 2.2 §2.5.1: a value or a set)."""
    if isinstance(value, list | tuple) or (isinstance(value, Mapping) and "@list" in value):
        return tuple(_literal(item, steps) for item in as_list(value))
    return _literal(value, steps)


# --- typed values: xsd:dateTime, xsd:duration, counts -----------------------------------------

_DATETIME = re.compile(
    r"(-?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?")
_DURATION = re.compile(
    r"(-)?P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")


def parse_xsd_datetime(text: str) -> datetime | None:
    """An xsd:dateTime as an aware datetime, or None. No timezone is read as UTC."""
    m = _DATETIME.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, tz = m.groups()
    try:
        micro = int((frac or "0")[:6].ljust(6, "0"))
        tzinfo = UTC if tz in (None, "Z") else _offset(tz)
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                        micro, tzinfo=tzinfo)
    except ValueError:  # month 13, hour 25, year 0, ...
        return None


def _offset(tz: str) -> timezone:
    sign = -1 if tz[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))


def parse_xsd_duration(text: str) -> Duration | None:
    """An xsd:duration (``P30D``, ``PT1H``, ``P1Y2M``, ``-P1D``) or None."""
    m = _DURATION.fullmatch(text)
    if m is None or text.endswith(("P", "T")):  # "P" and "P1DT" name no component
        return None
    sign_text, years, months, days, hours, minutes, seconds = m.groups()
    sign = -1 if sign_text else 1
    total_months = int(years or 0) * 12 + int(months or 0)
    exact = timedelta(days=int(days or 0), hours=int(hours or 0), minutes=int(minutes or 0),
                      seconds=float(seconds or 0))
    return Duration(sign * total_months, sign * exact, text)


def _add_months(start: datetime, months: int) -> datetime:
    """``start`` moved by whole months; the day is clamped to the target month's length."""
    if months == 0:
        return start
    year, month0 = divmod(start.month - 1 + months, 12)
    year += start.year
    day = min(start.day, calendar.monthrange(year, month0 + 1)[1])
    return start.replace(year=year, month=month0 + 1, day=day)


def _typed_date_time(item: Scalar) -> Atom | Invalid:
    parsed = None
    if isinstance(item, str):
        parsed = parse_xsd_datetime(item) or parse_xsd_datetime(_start_of_day(item))
    if parsed is None:
        return Invalid(f"dateTime needs an xsd:dateTime or xsd:date, got {item!r}")
    return parsed


def _start_of_day(text: str) -> str:
    """An xsd:date (``2018-01-01``, ``2018-01-01+02:00``) as the dateTime its day begins."""
    m = re.fullmatch(r"(-?\d{4,}-\d\d-\d\d)(Z|[+-]\d\d:\d\d)?", text)
    return f"{m.group(1)}T00:00:00{m.group(2) or ''}" if m else ""


def _typed_duration(left: str, item: Scalar) -> Atom | Invalid:
    parsed = parse_xsd_duration(item) if isinstance(item, str) else None
    if parsed is None:
        return Invalid(f"{left} needs an xsd:duration (e.g. P30D), got {item!r}")
    return parsed


def _typed_count(item: Scalar) -> Atom | Invalid:
    number = _number(item) if isinstance(item, str) else item
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if isinstance(number, int) and number >= 0:
        return number
    return Invalid(f"count needs a non-negative integer, got {item!r}")


def typed_operand(left_operand: str, right: RightOperand) -> Value | Invalid:
    """The right operand converted for its left operand; ``Invalid`` says why it cannot be."""
    if left_operand == LeftOperand.DATE_TIME:
        convert = _typed_date_time
    elif left_operand == LeftOperand.COUNT:
        convert = _typed_count
    elif left_operand in (LeftOperand.ELAPSED_TIME, LeftOperand.DELAY_PERIOD):
        return _map(right, lambda item: _typed_duration(left_operand, item))
    else:
        return right
    return _map(right, convert)


def _map(right: RightOperand, convert: Any) -> Value | Invalid:
    if not isinstance(right, tuple):
        result: Atom | Invalid = convert(right)
        return result
    items = [convert(item) for item in right]
    bad = next((item for item in items if isinstance(item, Invalid)), None)
    return bad if bad is not None else tuple(items)


_OPERATORS = frozenset(op.value for op in Operator)


# --- documents --------------------------------------------------------------------------------


def parse_policy(doc: Mapping[str, Any]) -> Policy:
    """Parse an ODRL policy in compact JSON(-LD) form.

    Raises ``PolicySyntaxError`` (a ``PolicyError``) naming the path of the first structural
    error. A policy without rules is valid: it is an open offer and permits.
    """
    if not isinstance(doc, Mapping):
        raise PolicySyntaxError((), "a policy must be a JSON object")
    policy_id = _id(doc)
    if policy_id is not None and len(policy_id) > MAX_ID_LENGTH:  # an agreement's id is kept
        raise PolicySyntaxError((), f"@id longer than {MAX_ID_LENGTH} characters", "@id")
    return Policy(
        id=policy_id,
        permissions=parse_rules(doc, "permission"),
        prohibitions=parse_rules(doc, "prohibition"),
        obligations=parse_rules(doc, "obligation"),
        target=parse_party_or_asset(doc, "target", ()),
        assignee=parse_party_or_asset(doc, "assignee", ()),
    )


def _id(obj: Mapping[str, Any]) -> str | None:
    """``@id``, else ODRL's ``uid`` (the W3C examples name policies by ``uid``)."""
    value = obj.get("@id")
    if value is None:
        value = _term(get_key(obj, "uid"))
    return value if isinstance(value, str) else None


def parse_party_or_asset(obj: Mapping[str, Any], key: str, steps: tuple[Step, ...]) -> str | None:
    """A rule's or policy's ``target``/``assignee``: one IRI (string, ``@id`` or ``uid``)."""
    items = as_list(get_key(obj, key))
    if not items:
        return None
    if len(items) > 1:
        raise PolicySyntaxError(steps, f"{key} must name one {key}, got {len(items)}", key)
    item = items[0]
    if isinstance(item, Mapping) and "@id" not in item:
        item = get_key(item, "uid")
    value = _term(item)
    if value is None:
        raise PolicySyntaxError(steps, f"{key} must be an IRI, got {items[0]!r}", key)
    return value


def parse_rules(doc: Mapping[str, Any], kind: str) -> tuple[Rule, ...]:
    """The rules under key ``kind`` (permission, prohibition, obligation)."""
    return tuple(parse_rule(item, (kind, i), kind == "permission")
                 for i, item in enumerate(as_list(get_key(doc, kind))))


def parse_rule(obj: Any, steps: tuple[Step, ...], with_duties: bool = False) -> Rule:
    """One rule; duties are read for permissions (ODRL 2.2 §2.6.1)."""
    if not isinstance(obj, Mapping):
        raise PolicySyntaxError(steps, "a rule must be a JSON object")
    duties: tuple[Rule, ...] = ()
    if with_duties:
        duties = tuple(parse_rule(d, (*steps, "duty", j))
                       for j, d in enumerate(as_list(get_key(obj, "duty"))))
    is_duty = "duty" in steps[-2:]
    refinements = parse_refinements(obj, steps) if is_duty else ()
    return Rule(parse_action(obj, steps, allow_refinement=is_duty), parse_constraints(obj, steps),
                duties, parse_party_or_asset(obj, "target", steps),
                parse_party_or_asset(obj, "assignee", steps), refinements, _id(obj))


def _action_object(raw: Any) -> Any:
    """A one-element action list (JSON-LD compaction may keep the array) as its element."""
    return raw[0] if isinstance(raw, list) and len(raw) == 1 else raw


def parse_action(obj: Mapping[str, Any], steps: tuple[Step, ...],
                 allow_refinement: bool = False) -> str:
    """The rule's action, compact (DSP 2025-1 schema: ``action`` is a string).

    Refinements are refused unless ``allow_refinement`` (duties): on a permission, ignoring
    one would widen it (ODRL 2.2 §2.7.1), so such a policy does not parse.
    """
    raw = _action_object(get_key(obj, "action"))
    if raw is None:
        raise PolicySyntaxError(steps, "rule has no action")
    if isinstance(raw, Mapping) and get_key(raw, "refinement") is not None and not allow_refinement:
        raise PolicySyntaxError(steps, "action refinements are not supported", "action")
    action = _term(raw.get("rdf:value", raw) if isinstance(raw, Mapping) else raw)
    if action is None:
        raise PolicySyntaxError(steps, f"action must be a string, got {raw!r}", "action")
    return action


def parse_refinements(obj: Mapping[str, Any], steps: tuple[Step, ...]) -> tuple[Constraint, ...]:
    """A duty's action refinements (ODRL 2.2 §2.7.1), parsed like constraints."""
    raw = _action_object(get_key(obj, "action"))
    if not isinstance(raw, Mapping):
        return ()
    return tuple(parse_constraint(c, (*steps, "action", "refinement", i))
                 for i, c in enumerate(as_list(get_key(raw, "refinement"))))


def parse_constraints(obj: Mapping[str, Any], steps: tuple[Step, ...]) -> tuple[Constraint, ...]:
    """The constraints under a rule's ``constraint`` key."""
    return tuple(parse_constraint(c, (*steps, "constraint", i))
                 for i, c in enumerate(as_list(get_key(obj, "constraint"))))


def parse_constraint(obj: Any, steps: tuple[Step, ...]) -> Constraint:
    """One atomic or logical constraint."""
    if not isinstance(obj, Mapping):
        raise PolicySyntaxError(steps, "a constraint must be a JSON object")
    kinds = [kind for kind in LogicalKind if get_key(obj, kind.value) is not None]
    if len(kinds) > 1:
        names = ", ".join(k.value for k in kinds)
        raise PolicySyntaxError(steps, f"logical constraint needs exactly one of and, or, xone, "
                                f"andSequence, got {names}")
    if kinds:
        return _logical(obj, kinds[0], steps)
    if get_key(obj, "leftOperand") is None:
        raise PolicySyntaxError(steps, "constraint is neither atomic (leftOperand, operator, "
                                "rightOperand) nor logical (one of and, or, xone, andSequence)")
    return _atomic(obj, steps)


def _logical(obj: Mapping[str, Any], kind: LogicalKind, steps: tuple[Step, ...]) -> Constraint:
    if get_key(obj, "leftOperand") is not None:
        raise PolicySyntaxError(steps, f"constraint mixes '{kind}' with leftOperand")
    members = as_list(get_key(obj, kind.value))
    if not members:
        raise PolicySyntaxError(steps, f"logical constraint '{kind}' has no members", kind.value)
    return LogicalConstraint(kind, tuple(parse_constraint(m, (*steps, kind.value, i))
                                         for i, m in enumerate(members)))


def _atomic(obj: Mapping[str, Any], steps: tuple[Step, ...]) -> AtomicConstraint:
    left = _term(get_key(obj, "leftOperand"))
    if left is None:
        raise PolicySyntaxError(steps, "leftOperand must be a string", "leftOperand")
    raw_operator = get_key(obj, "operator")
    operator = _term(raw_operator)
    if operator is None:
        raise PolicySyntaxError(steps, "constraint has no operator", "operator")
    if operator not in _OPERATORS:
        raise PolicySyntaxError(steps, f"unknown operator '{operator}'", "operator")
    raw_right = get_key(obj, "rightOperand")
    if raw_right is None:
        raise PolicySyntaxError(steps, "constraint has no rightOperand", "rightOperand")
    return AtomicConstraint(left, Operator(operator), parse_right_operand(raw_right, steps))
