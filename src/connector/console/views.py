"""What the console's pages show, computed from records and documents (no IO).

ODRL constraints (ODRL 2.2 §2.5) are put into words the templates translate; agreements
get their use limit and expiry from their ``count`` and ``dateTime`` constraints; lists are
paged by the store (``Store.page_*``), so a page costs the same whatever it holds beyond.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connector.core.ids import short_id

# ODRL 2.2 operators, as the console says them (each is a catalogue message).
OPERATOR_WORDS = {"eq": "is", "neq": "is not", "lt": "less than", "lteq": "at most",
                  "gt": "more than", "gteq": "at least", "isAnyOf": "is one of",
                  "isNoneOf": "is none of", "isA": "is a", "hasPart": "has part",
                  "isPartOf": "is part of", "isAllOf": "is all of"}
PAGE_SIZE = 50  # rows of a list page
RECENT = 10  # lines of recent activity on the overview


@dataclass(frozen=True)
class Constraint:
    left: str
    operator: str  # a catalogue message, e.g. "at most"
    right: str


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _operand(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("@value", value.get("@id", value)))
    if isinstance(value, list):
        return ", ".join(_operand(v) for v in value)
    return str(value)


def constraints(policy: Mapping[str, Any]) -> list[Constraint]:
    """The constraints of every permission of an ODRL policy, in reading order."""
    found = []
    for rule in _as_list(policy.get("permission")):
        if not isinstance(rule, dict):
            continue
        for c in _as_list(rule.get("constraint")):
            if isinstance(c, dict):
                operator = _operand(c.get("operator", ""))
                found.append(Constraint(_operand(c.get("leftOperand", "")),
                                        OPERATOR_WORDS.get(operator, operator),
                                        _operand(c.get("rightOperand", ""))))
    return found


def use_limit(policy: Mapping[str, Any]) -> int | None:
    """The most uses a ``count`` constraint allows, None without one."""
    for c in constraints(policy):
        if c.left == "count" and c.right.isdigit():
            if c.operator == "at most":
                return int(c.right)
            if c.operator == "less than":
                return int(c.right) - 1
    return None


def expiry(policy: Mapping[str, Any]) -> str | None:
    """The end of a ``dateTime`` window (ISO 8601 as written), None without one."""
    for c in constraints(policy):
        if c.left == "dateTime" and c.operator in ("at most", "less than"):
            return c.right
    return None


@dataclass(frozen=True)
class Offer:
    id: str
    description: str
    policy: Mapping[str, Any]


@dataclass(frozen=True)
class Dataset:
    id: str
    title: str
    description: str
    keywords: list[str]
    offers: list[Offer]


def datasets(catalog: Mapping[str, Any]) -> list[Dataset]:
    """The datasets of a DCAT catalogue (DSP 2025-1 §Catalog) with their offers."""
    found = []
    for d in _as_list(catalog.get("dataset")):
        if not isinstance(d, dict):
            continue
        offers = [Offer(str(o.get("@id", "")), _text(o.get("description")), o)
                  for o in _as_list(d.get("hasPolicy")) if isinstance(o, dict)]
        found.append(Dataset(str(d.get("@id", "")), _text(d.get("title")),
                             _text(d.get("description")),
                             [_text(k) for k in _as_list(d.get("keyword"))], offers))
    return found


def find_offer(catalog: Mapping[str, Any], dataset_id: str, offer_id: str) -> Offer | None:
    for d in datasets(catalog):
        if d.id == dataset_id:
            return next((o for o in d.offers if o.id == offer_id), None)
    return None


def _text(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return str(value.get("@value", ""))
    return "" if value is None else str(value)


@dataclass(frozen=True)
class TraceLine:
    satisfied: bool | None  # None: a line that is not a constraint's result
    text: str


def trace(note: str) -> list[TraceLine]:
    """A history note's lines; a policy decision's lines start with ✓ or ✗."""
    lines = []
    for line in note.splitlines():
        if line.startswith("✓"):
            lines.append(TraceLine(True, line[1:].strip()))
        elif line.startswith("✗"):
            lines.append(TraceLine(False, line[1:].strip()))
        elif line.strip():
            lines.append(TraceLine(None, line.strip()))
    return lines


def short(pid: str) -> str:
    """A process id as lists show it (``core.ids.short_id``)."""
    return short_id(pid)


def when(at: float | None) -> str:
    """A timestamp as the console shows it (UTC, to the second)."""
    if not at:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + " UTC"


@dataclass(frozen=True)
class Page:
    rows: Sequence[Any]
    number: int
    pages: int
    total: int


def page_number(raw: str, total: int) -> int:
    """The page asked for (from 1, ``?page=``), within the pages ``total`` rows make."""
    number = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 7 else 1
    return min(max(1, number), pages_of(total))


def pages_of(total: int) -> int:
    return max(1, -(-total // PAGE_SIZE))


@dataclass(frozen=True)
class Activity:
    at: float
    kind: str  # "negotiation" or "transfer"
    id: str
    by: str
    message: str
    state: str


def recent(negotiations: Iterable[Any], transfers: Iterable[Any]) -> list[Activity]:
    """The RECENT newest timeline lines across all processes."""
    lines = [Activity(e.at, kind, r.id, e.by, e.message, e.state)
             for kind, records in (("negotiation", negotiations), ("transfer", transfers))
             for r in records for e in r.history[-RECENT:]]
    return sorted(lines, key=lambda a: a.at, reverse=True)[:RECENT]


@dataclass(frozen=True)
class StatusEntry:
    """Where a verifier looks up whether a credential was revoked (or suspended): bit
    ``index`` of the status list credential at ``url`` (W3C Bitstring Status List §2.1)."""

    url: str
    index: int
    purpose: str  # "revocation" or "suspension"


@dataclass(frozen=True)
class Credential:
    """What the policies page shows of one of our verifiable credentials (a VC JWT)."""

    types: str
    issuer: str
    expires: str  # "" when it does not say
    status: str  # the status list entries a verifier checks for revocation, "" if none
    expires_at: float | None = None  # ``exp``, when the JWT has one
    entries: tuple[StatusEntry, ...] = ()
    malformed: str = ""  # why a status entry cannot be checked ("" when each can)


def _status_entry(s: Mapping[str, Any]) -> StatusEntry | None:
    index = s.get("statusListIndex")
    url = s.get("statusListCredential")
    number = int(index) if isinstance(index, str) and index.isdecimal() else index
    if not isinstance(url, str) or not isinstance(number, int) or isinstance(number, bool):
        return None
    return StatusEntry(url, number, str(s.get("statusPurpose", "revocation")))


def credential(jwt: str) -> Credential:
    """The claims of a VC JWT, read without verifying it (it is our own, from our folder;
    peers verify it, and its revocation, when we present it)."""
    try:
        payload = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return Credential("?", "?", "", "", malformed="not a VC JWT")
    vc = claims.get("vc", claims) if isinstance(claims, dict) else {}
    types = [t for t in _as_list(vc.get("type")) if t != "VerifiableCredential"]
    exp = claims.get("exp") if isinstance(claims, dict) else None
    expires_at = float(exp) if isinstance(exp, int | float) else None
    expires = vc.get("validUntil") or vc.get("expirationDate") or (
        when(expires_at) if expires_at is not None else "")
    raw = [s for s in _as_list(vc.get("credentialStatus")) if isinstance(s, dict)]
    entries = [e for s in raw if (e := _status_entry(s)) is not None]
    status = " ".join(f"{e.url}#{e.index}" for e in entries)
    issuer = vc.get("issuer") or claims.get("iss", "")
    return Credential(", ".join(map(str, types)), _operand(issuer), str(expires), status,
                      expires_at, tuple(entries),
                      "" if len(entries) == len(_as_list(vc.get("credentialStatus")))
                      else "malformed credentialStatus")
