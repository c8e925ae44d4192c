"""Consent per data subject: who allows which consumer, for which purpose, until when; and
the decision a consent-governed pull takes for each record. Pure: no IO, time comes in.

Theory of operation (docs/consent.md)
-------------------------------------
A dataset may name the field of its records that identifies the data subject
(``subject_field`` in ``datasets/*.toml``). When the agreement's policy carries the constraint
``consent eq PURPOSE``, the provider's data plane serves a record only if the consent register
holds, for the record's subject, a consent that covers the consumer (its DID, or an attribute
the provider pinned for it such as ``membership=care-team``) and that purpose, and that is
neither withdrawn nor past its ``until``. Everything else is withheld, deny by default, and
counted under one reason class (``Withheld``), never under the subject's id.

The decision is taken record by record against the register in force at the moment the
record is handed to the connection (``RecordGate.take``), so a withdrawal or an expiry stops
the subject's records from the next one on, also in a stream already running.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec

# A subject id is also a file name (consents/SUBJECT.toml): letters, digits, ".", "_", "-".
SUBJECT_FORM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A purpose is one word, as the `consent` constraint names it: "care", "research.cohort-2".
PURPOSE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
# A consumer is a DID, or ATTRIBUTE=VALUE tested against what the provider pinned for it.
ATTRIBUTE_FORM = re.compile(r"([A-Za-z][A-Za-z0-9_-]{0,63})=([^=\s]{1,256})")
DID_FORM = re.compile(r"did:[a-z0-9]+:\S{1,1024}")
# The left operand that makes a dataset's agreements subject to the register.
CONSENT_OPERAND = "consent"


class Withheld(StrEnum):
    """Why a record was not served: the classes ``connector why`` counts."""

    NO_SUBJECT = "no subject field"
    NO_CONSENT = "no consent"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    OTHER_CONSUMER = "other consumer"
    OTHER_PURPOSE = "other purpose"


@dataclass(frozen=True, slots=True)
class Consent:
    """One grant: ``consumer`` (a DID or ``attribute=value``) may use the subject's records
    for ``purpose`` until ``until``; ``withdrawn`` ends it early."""

    consumer: str
    purpose: str
    until: datetime
    granted: datetime | None = None
    withdrawn: datetime | None = None

    def names(self, who: Requester) -> bool:
        """Whether this consent is given to ``who`` (by DID or by a pinned attribute)."""
        if self.consumer.startswith("did:"):
            return self.consumer == who.did
        name, _, value = self.consumer.partition("=")
        held = who.claims.get(name)
        if isinstance(held, list | tuple | set | frozenset):
            return value in {str(v) for v in held}
        return held is not None and str(held) == value


@dataclass(frozen=True, slots=True)
class Requester:
    """Who pulls (verified DID, the attributes the provider holds for it) and for what."""

    did: str
    claims: Mapping[str, Any]
    purpose: str


def decide(consents: Sequence[Consent], who: Requester, now: datetime) -> Withheld | None:
    """None when a consent in force covers ``who`` and its purpose at ``now``; otherwise the
    reason class, the most specific first: withdrawn, expired, other purpose, other consumer,
    no consent."""
    if not consents:
        return Withheld.NO_CONSENT
    theirs = [c for c in consents if c.names(who)]
    fitting = [c for c in theirs if c.purpose == who.purpose]
    if any(c.withdrawn is None and now < c.until for c in fitting):
        return None
    if any(c.withdrawn is not None for c in fitting):
        return Withheld.WITHDRAWN
    if fitting:
        return Withheld.EXPIRED
    return Withheld.OTHER_PURPOSE if theirs else Withheld.OTHER_CONSUMER


@dataclass(frozen=True, slots=True)
class Register:
    """Every subject's consents, as one snapshot; a change makes a new one."""

    subjects: Mapping[str, tuple[Consent, ...]] = field(default_factory=dict)

    def decide(self, subject: str, who: Requester, now: datetime) -> Withheld | None:
        return decide(self.subjects.get(subject, ()), who, now)


# --- the policy side ---------------------------------------------------------------------------


def consent_purpose(policy: Any) -> str | None:
    """The purpose of the first ``consent`` constraint in a policy's JSON(-LD), or None when it
    has none (then the register does not filter its records)."""
    for left, right in _atoms(policy):
        if left.rsplit("/", 1)[-1].rsplit(":", 1)[-1] == CONSENT_OPERAND:
            value = right.get("@value") if isinstance(right, dict) else right
            return value if isinstance(value, str) else None
    return None


def _atoms(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        left = node.get("leftOperand")
        if isinstance(left, dict):
            left = left.get("@id")
        if isinstance(left, str):
            yield left, node.get("rightOperand")
        for value in node.values():
            yield from _atoms(value)
    elif isinstance(node, list):
        for item in node:
            yield from _atoms(item)


# --- the per-record gate -----------------------------------------------------------------------


class RecordGate:
    """One stream's filter: JSON lines in, the lines of consenting subjects out.

    ``take`` is called with each chunk just before it is written, with the register then in
    force; records may span chunks (the incomplete tail waits for the next chunk). The first
    ``skip`` records served are dropped (a resumed pull: offsets count records served).
    ``withheld`` counts records by reason class only.
    """

    def __init__(self, subject_field: str, who: Requester, *, skip: int = 0) -> None:
        self._field = subject_field
        self._who = who
        self._skip = skip
        self._tail = b""
        # Only the subject field is decoded (msgspec skips the rest without building it), and
        # only a string or an integer is a subject (a bool, a float, a list are refused).
        subject = msgspec.defstruct("Subject", [("value", str | int | None, None)],
                                    rename={"value": subject_field})
        self._decode: msgspec.json.Decoder[Any] = msgspec.json.Decoder(subject)
        self.served = 0
        self.withheld: Counter[Withheld] = Counter()

    def take(self, chunk: bytes, register: Register, now: datetime) -> bytes:
        """The whole records of ``self._tail + chunk`` that may be served now."""
        data = self._tail + chunk
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        out = bytearray()
        start = 0
        decided: dict[str, Withheld | None] = {}  # per subject, for this chunk's instant
        while start < cut:
            end = data.index(b"\n", start) + 1
            line = data[start:end]
            start = end
            reason = self._judge(line, register, now, decided)
            if reason is not None:
                self.withheld[reason] += 1
            elif self._skip:
                self._skip -= 1
            else:
                self.served += 1
                out += line
        return bytes(out)

    def finish(self, register: Register, now: datetime) -> bytes:
        """A last record without its newline (sources add one; kept for safety)."""
        if not self._tail:
            return b""
        return self.take(b"\n", register, now)

    def _judge(self, line: bytes, register: Register, now: datetime,
               decided: dict[str, Withheld | None]) -> Withheld | None:
        if not self._field:
            return Withheld.NO_SUBJECT
        try:
            subject = self._decode.decode(line).value
        except msgspec.DecodeError:  # not JSON, not an object, a subject of another type
            return Withheld.NO_SUBJECT
        if subject is None or subject == "":
            return Withheld.NO_SUBJECT
        key = str(subject)
        if key not in decided:
            decided[key] = register.decide(key, self._who, now)
        return decided[key]

    def counts(self) -> dict[str, int]:
        """The withheld records by reason class (what metrics count)."""
        return {reason.value: count for reason, count in self.withheld.items()}

    def account(self) -> str:
        """What this stream served and withheld, by reason class (no subject named)."""
        if not self.withheld:
            return f"consent: {self.served} records served, none withheld"
        parts = ", ".join(f"{reason.value} {self.withheld[reason]}" for reason in Withheld
                          if self.withheld[reason])
        total = sum(self.withheld.values())
        return f"consent: {self.served} records served, {total} withheld ({parts})"
