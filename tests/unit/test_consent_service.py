"""The live register (service/consents.py) over an in-memory ConsentFiles: a grant or a
withdrawal is in force when it returns, an edit by hand once ``refresh`` sees it, and a pull
whose agreement has no ``consent`` constraint is not filtered."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from connector.core.consent import Consent, Register, Withheld
from connector.core.errors import InvalidParameter
from connector.service.consents import ConsentService

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC).timestamp()
CARE = "did:web:care.example"


@dataclass
class MemoryFiles:
    subjects: dict[str, tuple[Consent, ...]] = field(default_factory=dict)
    version: int = 0

    def load(self) -> tuple[Register, int]:
        return Register(dict(self.subjects)), 0

    def stamp(self) -> int:
        return self.version

    def grant(self, subject: str, consent: Consent) -> None:
        self.subjects[subject] = (*self.subjects.get(subject, ()), consent)
        self.version += 1

    def withdraw(self, subject: str, now: datetime, consumer: str | None,
                 purpose: str | None) -> int:
        self.subjects[subject] = tuple(Consent(c.consumer, c.purpose, c.until, c.granted, now)
                                       for c in self.subjects[subject])
        self.version += 1
        return len(self.subjects[subject])

    def listing(self, register: Register, now: datetime) -> list[dict[str, Any]]:
        return [{"subject": s} for s in register.subjects]


@dataclass
class Agreement:
    body: dict[str, Any]
    assignee: str = CARE


@dataclass
class Decl:
    subject_field: str | None = "patient"


UNDER_CONSENT = Agreement({"permission": [{"action": "use", "constraint": [
    {"leftOperand": "consent", "operator": "eq", "rightOperand": "care"}]}]})
RECORDS = b'{"patient": "p1"}\n{"patient": "p2"}\n'


def service(files: MemoryFiles) -> ConsentService:
    return ConsentService(files, clock=lambda: NOW, claims_for=lambda did: {})


def test_grant_and_withdraw_are_in_force_when_they_return() -> None:
    files = MemoryFiles()
    consents = service(files)
    gate = consents.gate(Decl(), UNDER_CONSENT)
    assert gate is not None and consents.take(gate, RECORDS) == b""
    asyncio.run(consents.grant("p1", CARE, "care", "2027-01-01T00:00:00+00:00"))
    assert consents.take(gate, RECORDS) == b'{"patient": "p1"}\n'
    assert asyncio.run(consents.withdraw("p1", None, None)) == 1
    assert consents.take(gate, RECORDS) == b""
    assert gate.withheld[Withheld.WITHDRAWN] == 1


def test_an_edit_by_hand_is_read_on_refresh() -> None:
    files = MemoryFiles()
    consents = service(files)
    files.grant("p2", Consent(CARE, "care", datetime(2027, 1, 1, tzinfo=UTC)))
    assert "p2" not in consents.register.subjects
    consents.refresh()
    assert "p2" in consents.register.subjects


def test_without_the_constraint_there_is_no_gate_and_a_bad_date_is_refused() -> None:
    consents = service(MemoryFiles())
    assert consents.gate(Decl(), Agreement({"permission": [{"action": "use"}]})) is None
    with pytest.raises(InvalidParameter, match="until"):
        asyncio.run(consents.grant("p1", CARE, "care", "2027-01-01"))
