"""``consents/SUBJECT.toml``: the consent register, one file per data subject, under git.

::

    # consents/patient-0001.toml
    [[consent]]
    consumer = "did:web:care.example"     # or a pinned attribute: "membership=care-team"
    purpose = "care"
    until = 2027-06-30T00:00:00Z          # an RFC 3339 date-time with its offset
    granted = 2026-12-06T09:00:00Z
    withdrawn = 2026-12-07T10:00:00Z      # set by `connector consent withdraw`

``entry_problems`` is the one set of rules: ``load_register`` leaves a subject whose file has a
problem without any consent in force (deny by default), ``check_consents`` reports each problem
with its file and line for ``connector policy check``. ``grant`` and ``withdraw`` rewrite one
subject's file in one step (``layout.write_atomic``). docs/consent.md says more.
"""

from __future__ import annotations

import csv
import json
import tomllib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connector.core.consent import (
    ATTRIBUTE_FORM,
    DID_FORM,
    PURPOSE_FORM,
    SUBJECT_FORM,
    Consent,
    Register,
    consent_purpose,
)
from connector.core.errors import ConfigError, ConflictError, InvalidParameter, NotFound, Problem
from connector.participant.layout import write_atomic
from connector.participant.policies import load_policies

CONSENTS_DIR = "consents"
ENTRY_KEYS = ("consumer", "purpose", "until", "granted", "withdrawn")
_DATES = ("until", "granted", "withdrawn")

# (entry index or None for the file, key or None, message)
Finding = tuple[int | None, str | None, str]


def consent_file(root: Path, subject: str) -> Path:
    """Where ``subject``'s consents live; InvalidParameter for a subject id of another form."""
    if not SUBJECT_FORM.fullmatch(subject):
        # The value is not echoed: errors are logged, and subject ids never are.
        raise InvalidParameter("subject must be 1-128 letters, digits, '.', '_' or '-' "
                               "(not starting with '.', '_' or '-')")
    return root / CONSENTS_DIR / f"{subject}.toml"


def moment(value: Any) -> datetime | None:
    """A TOML offset date-time, or an RFC 3339 string with its offset, as aware UTC; None for
    anything else (a local time, a bare date, text)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is past datetime.max in UTC
        return None


def entry_problems(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for each thing wrong with one ``[[consent]]`` entry."""
    found = [(key, f"unknown key '{key}' (a consent has {', '.join(ENTRY_KEYS)})")
             for key in entry if key not in ENTRY_KEYS]
    consumer = entry.get("consumer")
    if not isinstance(consumer, str) or not (DID_FORM.fullmatch(consumer)
                                             or ATTRIBUTE_FORM.fullmatch(consumer)):
        found.append(("consumer", "consumer must be a DID (did:web:...) or an attribute the "
                      "provider pins, as attribute=value (membership=care-team)"))
    purpose = entry.get("purpose")
    if not isinstance(purpose, str) or not PURPOSE_FORM.fullmatch(purpose):
        found.append(("purpose", "purpose must be one word of letters, digits, '.', '_' or '-' "
                      "(the purpose a `consent eq PURPOSE` constraint names), not "
                      f"{purpose!r}"[:160]))
    for key in _DATES:
        if (key == "until" or key in entry) and moment(entry.get(key)) is None:
            found.append((key, f"{key} must be a date-time with its offset, as "
                          f"2027-06-30T00:00:00Z, not {entry.get(key)!r}"[:160]))
    return found


def _findings(text: str) -> tuple[list[Consent], list[Finding]]:
    """The consents of one file's text, and what is wrong with it."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [], [(None, None, f"invalid TOML: {exc}")]
    found: list[Finding] = [(None, key, f"unknown key '{key}': a consent file holds "
                             "[[consent]] entries only") for key in data if key != "consent"]
    entries = data.get("consent", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return [], [*found, (None, "consent", "consent must be [[consent]] tables")]
    consents = []
    for i, entry in enumerate(entries):
        problems = entry_problems(entry)
        found.extend((i, key, message) for key, message in problems)
        if not problems:
            consents.append(_consent(entry))
    return consents, found


def _consent(entry: Mapping[str, Any]) -> Consent:
    until = moment(entry["until"])
    assert until is not None  # entry_problems passed
    return Consent(consumer=entry["consumer"], purpose=entry["purpose"], until=until,
                   granted=moment(entry.get("granted")), withdrawn=moment(entry.get("withdrawn")))


def _line(text: str, index: int | None, key: str | None) -> int:
    """1-based line of the ``index``-th ``[[consent]]`` (its ``key`` if found), else 1."""
    lines = text.splitlines()
    start, seen = 0, -1
    if index is not None:
        for i, line in enumerate(lines):
            if line.strip().replace(" ", "") == "[[consent]]":
                seen += 1
                if seen == index:
                    start = i
                    break
    if key is None:
        return start + 1
    for i in range(start, len(lines)):
        stripped = lines[i].lstrip()
        if i > start and stripped.startswith("["):
            break
        if stripped.split("=", 1)[0].strip() == key:
            return i + 1
    return start + 1


def _files(root: Path) -> Iterator[Path]:
    folder = root / CONSENTS_DIR
    return iter(sorted(folder.glob("*.toml"))) if folder.is_dir() else iter(())


def _read(path: Path) -> tuple[str | None, str | None]:
    """(text, None) or (None, why it cannot be read)."""
    try:
        return path.read_text(), None
    except OSError as exc:
        return None, f"cannot read: {exc.strerror}"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"


def check_consents(root: Path) -> list[Problem]:
    """Every problem of ``consents/*.toml``, with file and line (``connector policy check``)."""
    out: list[Problem] = []
    for path in _files(root):
        name = str(root / CONSENTS_DIR / path.name)
        if not SUBJECT_FORM.fullmatch(path.stem):
            out.append(Problem(name, 1, "the file name must be the subject id: letters, "
                               "digits, '.', '_' or '-'"))
        text, unreadable = _read(path)
        if text is None:
            out.append(Problem(name, 1, unreadable or "cannot read"))
            continue
        for index, key, message in _findings(text)[1]:
            line = _toml_error_line(message) if key is None and index is None else None
            out.append(Problem(name, line or _line(text, index, key), message))
    return out


def _toml_error_line(message: str) -> int | None:
    marker = "(at line "
    if marker not in message:
        return None
    return int(message.split(marker, 1)[1].split(",", 1)[0])


def load_register(root: Path) -> tuple[Register, int]:
    """The register the files say, and how many files have a problem: their subjects have no
    consent in force until the file is fixed (deny by default)."""
    subjects: dict[str, tuple[Consent, ...]] = {}
    broken = 0
    for path in _files(root):
        text, _ = _read(path)
        consents, found = _findings(text) if text is not None else ([], [(None, None, "")])
        if found or not SUBJECT_FORM.fullmatch(path.stem):
            broken += 1
            continue
        subjects[path.stem] = tuple(consents)
    return Register(subjects), broken


def stamp(root: Path) -> tuple[tuple[str, int, int], ...]:
    """What a change of the register changes: each file's name, size and mtime."""
    out = []
    for path in _files(root):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


# --- writing -----------------------------------------------------------------------------------


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def render(consents: tuple[Consent, ...]) -> str:
    """One subject's file, as ``grant`` and ``withdraw`` write it."""
    parts = ["# Consents of one data subject (docs/consent.md).\n"]
    for c in consents:
        parts.append(f"\n[[consent]]\nconsumer = {json.dumps(c.consumer)}\n"
                     f"purpose = {json.dumps(c.purpose)}\nuntil = {_iso(c.until)}\n")
        if c.granted is not None:
            parts.append(f"granted = {_iso(c.granted)}\n")
        if c.withdrawn is not None:
            parts.append(f"withdrawn = {_iso(c.withdrawn)}\n")
    return "".join(parts)


def _current(path: Path) -> tuple[Consent, ...]:
    """A subject's consents before a change; ConflictError when its file has a problem (a
    rewrite would lose what the file says)."""
    if not path.exists():
        return ()
    text, unreadable = _read(path)
    consents, found = _findings(text) if text is not None else ([], [])
    if text is None or found:
        why = unreadable or found[0][2]
        raise ConflictError(f"the subject's consent file has a problem ({why}); fix it "
                            "(connector policy check) before changing it")
    return tuple(consents)


def grant(root: Path, subject: str, consent: Consent) -> None:
    """Add ``consent`` to ``subject``'s file (created if need be), in one step."""
    problems = entry_problems({"consumer": consent.consumer, "purpose": consent.purpose,
                               "until": consent.until})
    if problems:
        raise InvalidParameter(problems[0][1])
    path = consent_file(root, subject)
    write_atomic(path, render((*_current(path), consent)))


def withdraw(root: Path, subject: str, now: datetime, *, consumer: str | None = None,
             purpose: str | None = None) -> int:
    """Mark ``subject``'s consents in force (those of ``consumer`` and ``purpose`` if given)
    withdrawn at ``now``; how many. NotFound when none is in force."""
    path = consent_file(root, subject)
    before = _current(path)
    after, count = [], 0
    for c in before:
        hit = (c.withdrawn is None and now < c.until and consumer in (None, c.consumer)
               and purpose in (None, c.purpose))
        count += hit
        after.append(Consent(c.consumer, c.purpose, c.until, c.granted, now) if hit else c)
    if not count:
        raise NotFound("the subject has no consent in force to withdraw"
                       + (f" for {consumer}" if consumer else "")
                       + (f" for purpose {purpose}" if purpose else ""))
    write_atomic(path, render(tuple(after)))
    return count


def listing(register: Register, now: datetime) -> list[dict[str, Any]]:
    """The register as the management API lists it: one row per consent, with its state."""
    rows = []
    for subject in sorted(register.subjects):
        for c in register.subjects[subject]:
            state = ("withdrawn" if c.withdrawn is not None
                     else "expired" if now >= c.until else "in force")
            rows.append({"subject": subject, "consumer": c.consumer, "purpose": c.purpose,
                         "until": _iso(c.until), "state": state,
                         "granted": _iso(c.granted) if c.granted else None,
                         "withdrawn": _iso(c.withdrawn) if c.withdrawn else None})
    return rows


# --- the dataset side --------------------------------------------------------------------------


def subject_field_problem(data: Mapping[str, Any], root: Path) -> str | None:
    """What is wrong with a dataset's ``subject_field``: not a non-empty string, or (for a
    JSON-lines or CSV file source) absent from its first record. Other sources are not read."""
    field = data.get("subject_field")
    if not isinstance(field, str) or not field:
        return "key 'subject_field' must be the non-empty name of a field of the records"
    source = data.get("source")
    if not isinstance(source, dict) or source.get("type") not in ("jsonl", "csv"):
        return None
    path = source.get("path")
    if not isinstance(path, str):
        return None
    fields = _first_record_fields(root / path, source["type"])
    if fields is not None and field not in fields:
        shown = ", ".join(sorted(fields)[:20]) or "none"
        return (f"subject_field {field!r} is not a field of the source's records "
                f"(its first record has: {shown})")
    return None


def consent_without_subject(data: Mapping[str, Any], root: Path) -> str | None:
    """A dataset offered under a policy that requires consent (``consent eq PURPOSE``) but
    naming no ``subject_field``: every record would be withheld. None otherwise, or when the
    policies cannot be read (reported on their own lines)."""
    if "subject_field" in data:
        return None
    try:
        documents = load_policies(root)
    except ConfigError:
        return None
    for name in data.get("policies", ()):
        if consent_purpose(documents.get(name)) is not None:
            return (f"policy {name!r} requires consent, but the dataset names no "
                    "subject_field: no record would be served (docs/consent.md)")
    return None


def _first_record_fields(path: Path, kind: str) -> set[str] | None:
    """The field names of a file source's first record; None when it cannot be read."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            if kind == "csv":
                return set(next(csv.reader(f), []))
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    return set(record) if isinstance(record, dict) else set()
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return None


class FolderConsents:
    """The register's files in a participant folder (``service.consents.ConsentFiles``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self) -> tuple[Register, int]:
        return load_register(self.root)

    def stamp(self) -> tuple[tuple[str, int, int], ...]:
        return stamp(self.root)

    def grant(self, subject: str, consent: Consent) -> None:
        grant(self.root, subject, consent)

    def withdraw(self, subject: str, now: datetime, consumer: str | None,
                 purpose: str | None) -> int:
        return withdraw(self.root, subject, now, consumer=consumer, purpose=purpose)

    def listing(self, register: Register, now: datetime) -> list[dict[str, Any]]:
        return listing(register, now)
