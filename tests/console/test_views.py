"""What the pages compute from records and policies (connector/console/views.py), and the
console's sessions (idle expiry)."""

from __future__ import annotations

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


def test_the_page_asked_for_stays_within_the_pages() -> None:
    assert views.pages_of(0) == 1 and views.pages_of(50) == 1 and views.pages_of(51) == 2
    assert views.page_number("2", 120) == 2
    assert views.page_number("9", 120) == 3
    for raw in ("0", "-1", "x", "", "²", "9" * 40):
        assert views.page_number(raw, 120) == 1


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


def test_a_credential_shows_type_issuer_expiry_and_status_list() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from connector.core.credentials import StatusEntry, issue_credential

    jwt = issue_credential(
        Ed25519PrivateKey.generate(), kid="did:web:a#k", issuer="did:web:a",
        subject="did:web:me", credential_id="urn:c", now=1_700_000_000, valid_s=3600,
        status=StatusEntry(list_url="https://a/status/1", index=7))
    shown = views.credential(jwt)
    assert shown.types == "MembershipCredential" and shown.issuer == "did:web:a"
    assert shown.expires == "2023-11-14T23:13:20Z"
    assert shown.status == "https://a/status/1#7"
    assert shown.entries == (views.StatusEntry("https://a/status/1", 7, "revocation"),)
    assert shown.expires_at == 1_700_003_600 and shown.malformed == ""
    assert views.credential("not a jwt") == views.Credential("?", "?", "", "",
                                                             malformed="not a VC JWT")
