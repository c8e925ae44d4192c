"""What the pages compute from records and policies (connector/console/views.py), and the
console's sessions (idle expiry)."""

from __future__ import annotations

from types import SimpleNamespace

from connector.console import views
from connector.console.i18n import negotiate_language
from connector.console.web import SESSION_IDLE_S, Sessions

POLICY = {"permission": [{"action": "use", "constraint": [
    {"leftOperand": "count", "operator": "lteq", "rightOperand": "100"},
    {"leftOperand": "dateTime", "operator": "lt", "rightOperand": {"@value": "2030-01-01"}},
    {"leftOperand": "membership", "operator": "eq", "rightOperand": "active"}]}]}


def test_constraints_in_words_with_limit_and_expiry() -> None:
    assert [(c.left, c.operator, c.right) for c in views.constraints(POLICY)] == [
        ("count", "at most", "100"), ("dateTime", "less than", "2030-01-01"),
        ("membership", "is", "active")]
    assert views.use_limit(POLICY) == 100
    assert views.expiry(POLICY) == "2030-01-01"
    assert views.use_limit({"permission": {"constraint": {"leftOperand": "count",
                                                          "operator": "lt",
                                                          "rightOperand": "5"}}}) == 4
    assert views.use_limit({}) is None and views.expiry({"permission": "junk"}) is None


def test_a_decision_trace_keeps_each_constraints_result() -> None:
    lines = views.trace("✓ permission[0] membership eq active: ok\n✗ purpose eq research: none\n"
                        "a plain line\n\n")
    assert [(t.satisfied, t.text) for t in lines] == [
        (True, "permission[0] membership eq active: ok"), (False, "purpose eq research: none"),
        (None, "a plain line")]


def test_lists_are_filtered_and_paged_newest_first() -> None:
    rows = [SimpleNamespace(state=SimpleNamespace(value="A" if i % 2 else "B"), role="consumer",
                            n=i) for i in range(120)]
    picked = views.filtered(rows, state="A", role="consumer")
    assert [r.n for r in picked][:3] == [1, 3, 5] and len(picked) == 60
    assert views.filtered(rows, state="", role="") == rows
    first = views.page(picked, 1)
    assert (first.number, first.pages, first.total) == (1, 2, 60)
    assert [r.n for r in first.rows][:2] == [119, 117] and len(first.rows) == 50
    last = views.page(picked, 99)
    assert last.number == 2 and [r.n for r in last.rows] == [19, 17, 15, 13, 11, 9, 7, 5, 3, 1]
    assert views.page([], 1).rows == []


def test_sessions_end_when_idle() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0])
    session = sessions.create("fr")
    now[0] = SESSION_IDLE_S - 1
    assert sessions.get(session.id) is session  # and this use restarts the idle time
    now[0] += SESSION_IDLE_S - 1
    assert sessions.get(session.id) is session
    now[0] += SESSION_IDLE_S + 1
    assert sessions.get(session.id) is None
    assert sessions.get(None) is None and sessions.get("") is None


def test_the_browser_language_picks_ours() -> None:
    assert negotiate_language("fr-FR,fr;q=0.9,en;q=0.8") == "fr"
    assert negotiate_language("de,en;q=0.5") == "en"
    assert negotiate_language("") == "en"
