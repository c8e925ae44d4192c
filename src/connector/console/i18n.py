"""Gettext-style message catalogues: ``locale/<lang>.po``, English message ids.

A catalogue maps each English message (``msgid``) to its translation (``msgstr``); an empty
``msgstr`` means the message is shown as written (the English catalogue is all empty). Only
the subset of the PO format the console needs is read: one-line ``msgid``/``msgstr`` pairs
and ``#`` comments. Messages may carry ``%(name)s`` placeholders.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LOCALE_DIR = Path(__file__).with_name("locale")
LANGUAGES = ("en", "fr")
DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True)
class Catalogue:
    language: str
    messages: Mapping[str, str]

    def gettext(self, message: str, **values: object) -> str:
        """``message`` in this language (as written if untranslated), placeholders filled."""
        text = self.messages.get(message) or message
        return text % values if values else text


def parse_po(text: str) -> dict[str, str]:
    """The msgid -> msgstr pairs of a PO file (one-line strings only)."""
    pairs: dict[str, str] = {}
    msgid: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, quoted = line.partition(" ")
        value = ast.literal_eval(quoted)
        if not isinstance(value, str) or keyword not in ("msgid", "msgstr"):
            raise ValueError(f"line {number}: expected msgid \"...\" or msgstr \"...\"")
        if keyword == "msgid":
            msgid = value
        elif msgid is None:
            raise ValueError(f"line {number}: msgstr without msgid")
        else:
            if msgid:  # the empty msgid is the PO header
                pairs[msgid] = value
            msgid = None
    return pairs


@functools.cache
def catalogue(language: str) -> Catalogue:
    if language not in LANGUAGES:
        language = DEFAULT_LANGUAGE
    path = LOCALE_DIR / f"{language}.po"
    return Catalogue(language, parse_po(path.read_text(encoding="utf-8")))


def negotiate_language(accept_language: str) -> str:
    """The first of our languages an ``Accept-Language`` header names (RFC 9110 §12.5.4,
    order taken as given), else English."""
    for part in accept_language.split(","):
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in LANGUAGES:
            return tag
    return DEFAULT_LANGUAGE
