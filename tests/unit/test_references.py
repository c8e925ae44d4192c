"""Every reference in src/ can be followed from a clone of the repository.

A comment or docstring cites a specification (DSP 2025-1 §.., DCP 1.0 §.., ODRL, an RFC) or a
document inside the repository; never a note kept elsewhere, nor a tag ("N2", "(#4)") that
points at nothing a reader can open.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "connector"
TEXT_SUFFIXES = {".py", ".sql", ".toml", ".md", ".txt", ".json", ".yaml", ".yml"}

# What points outside the repository, or at nothing.
FOREIGN = {
    "a note outside the repository": re.compile(
        r"\bthe notes\b|\bnotes? §|identity-policy|perf-limits|\bpeers\.md\b|\bdsp\.md\b|"
        r"\bcontainers\.md\b|\bshared/|\bDESIGN(\.md)?\b", re.IGNORECASE),
    "an issue or note tag": re.compile(r"\(N\d+\)|\(#\d+\)|\bissue #\d+", re.IGNORECASE),
}
# A path into the repository that a comment cites.
REPO_PATH = re.compile(
    r"\b(?:docs|interop|deploy|bench|tests|policies)/[\w./-]*\w\.(?:md|py|toml|sql)\b")
DOC_SECTION = re.compile(r"\b(docs/[\w.-]+\.md) §(\d+)")


def _sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)


def _hits(pattern: re.Pattern[str]) -> list[str]:
    out = []
    for path in _sources():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                out.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return out


@pytest.mark.parametrize("what", sorted(FOREIGN))
def test_no_reference_leaves_the_repository(what: str) -> None:
    assert _hits(FOREIGN[what]) == [], f"{what}: cite the specification or a file in docs/"


def test_the_patterns_catch_what_they_are_for() -> None:
    for text in ("see perf-limits §3", "(identity-policy note §1.4)", "the notes say",
                 "DESIGN §Publish", "peers.md", "(N2)", "(#4)", "issue #12"):
        assert any(p.search(text) for p in FOREIGN.values()), text
    for text in ("DSP 2025-1 §CN 3.2", "docs/interop-notes.md §2", "a note saying why"):
        assert not any(p.search(text) for p in FOREIGN.values()), text


def test_cited_repository_files_exist() -> None:
    cited = {m.group(0) for path in _sources() for m in REPO_PATH.finditer(path.read_text())}
    assert cited, "the pattern finds the citations"
    assert sorted(c for c in cited if not (ROOT / c).is_file()) == []


def test_cited_document_sections_exist() -> None:
    cited = {(m.group(1), m.group(2)) for path in _sources()
             for m in DOC_SECTION.finditer(path.read_text())}
    assert cited, "the pattern finds the citations"
    missing = [f"{doc} §{n}" for doc, n in sorted(cited)
               if not re.search(rf"(?m)^#+ {n}\. ", (ROOT / doc).read_text())]
    assert missing == []
