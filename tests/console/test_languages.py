"""The console speaks English and French: the catalogues cover every message the templates
use, and every page, rendered in one language, shows no message of the other."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest

from connector.console import views
from connector.console.i18n import LOCALE_DIR, catalogue, parse_po
from tests.console.browser_session import console_base, logged_in, visible_texts
from tests.managed_space import ManagedSpace

TEMPLATES = Path(views.__file__).with_name("templates")
# Messages chosen at run time rather than written in a template.
DYNAMIC = set(views.OPERATOR_WORDS.values()) | {"consumer", "provider", "policy"}


def template_messages() -> set[str]:
    found: set[str] = set()
    for path in TEMPLATES.glob("*.html"):
        found.update(re.findall(r'_\("([^"]+)"', path.read_text(encoding="utf-8")))
    return found | DYNAMIC


def test_every_message_is_in_both_catalogues_and_translated_in_french() -> None:
    used = template_messages()
    french = parse_po((LOCALE_DIR / "fr.po").read_text(encoding="utf-8"))
    english = parse_po((LOCALE_DIR / "en.po").read_text(encoding="utf-8"))
    assert sorted(used - set(french)) == []
    assert sorted(set(french) - used) == []  # no message left over
    assert set(english) == set(french)
    assert [m for m, t in french.items() if not t] == []
    for message, translation in french.items():  # the same placeholders
        assert sorted(re.findall(r"%\(\w+\)s", message)) == sorted(
            re.findall(r"%\(\w+\)s", translation)), message


def test_the_po_reader_refuses_what_it_cannot_read() -> None:
    assert parse_po('msgid "a"\nmsgstr "b"\n# c\n') == {"a": "b"}
    for bad in ('msgstr "b"\n', 'msgctxt "x"\n', 'msgid a\n'):
        with pytest.raises((ValueError, SyntaxError)):
            parse_po(bad)


def pages(space: ManagedSpace) -> list[str]:
    provider = quote(space.provider.url, safe="")
    return ["/", "/discover?q=weather", f"/discover?provider={provider}",
            f"/discover/confirm?provider={provider}&dataset=example-weather&offer="
            + quote(space.offer_id, safe=""),
            "/negotiations", f"/negotiations/{space.negotiation_id}", "/transfers",
            f"/transfers/{space.transfer_id}", "/agreements", "/policies", "/audit"]


def foreign(texts: list[str], language: str) -> list[str]:
    """Texts of the page that are a catalogue message of the other language."""
    french = catalogue("fr").messages
    if language == "fr":  # an English message whose French differs
        other = {m for m, t in french.items() if t != m}
    else:
        other = {t for m, t in french.items() if t != m}
    return [t for t in texts if t in other or t.rstrip(":").strip() in other]


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("language", ["en", "fr"])
async def test_every_page_renders_in_one_language(managed_space: ManagedSpace,
                                                  language: str) -> None:
    base = console_base(managed_space.consumer)
    async with logged_in(managed_space.consumer, language) as (http, _):
        for page in pages(managed_space):
            async with http.get(base + page) as resp:
                html = await resp.text()
                assert resp.status == 200, (page, html[:2000])
            assert f'<html lang="{language}">' in html
            texts = visible_texts(html)
            assert foreign(texts, language) == [], page
            heading = catalogue(language).gettext("Negotiations")
            assert heading in texts, page  # the navigation, in the language asked
