"""Consent per data subject, pure: the decision and its reason classes, the per-record gate
(records across chunks, resumed offsets, a register changed between chunks), the policy's
`consent` constraint."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from connector.core.consent import (
    Consent,
    RecordGate,
    Register,
    Requester,
    Withheld,
    consent_purpose,
    decide,
)
from connector.core.policy import PolicyContext, Scope, evaluate, parse_policy

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=30)
CARE = "did:web:care.example"
APP = "did:web:app.example"
CARE_TEAM = Requester(CARE, {"membership": "care-team"}, "care")


def consent(consumer: str = CARE, purpose: str = "care", until: datetime = LATER,
            withdrawn: datetime | None = None) -> Consent:
    return Consent(consumer, purpose, until, granted=NOW - timedelta(days=1),
                   withdrawn=withdrawn)


def test_a_consent_in_force_for_this_consumer_and_purpose_serves() -> None:
    assert decide([consent()], CARE_TEAM, NOW) is None


def test_a_consent_may_name_a_pinned_attribute_instead_of_a_did() -> None:
    assert decide([consent("membership=care-team")], CARE_TEAM, NOW) is None
    outsider = Requester(APP, {"membership": "apps"}, "care")
    assert decide([consent("membership=care-team")], outsider, NOW) is Withheld.OTHER_CONSUMER


def test_each_reason_class() -> None:
    assert decide([], CARE_TEAM, NOW) is Withheld.NO_CONSENT
    assert decide([consent(withdrawn=NOW)], CARE_TEAM, NOW) is Withheld.WITHDRAWN
    assert decide([consent(until=NOW)], CARE_TEAM, NOW) is Withheld.EXPIRED
    assert decide([consent(APP)], CARE_TEAM, NOW) is Withheld.OTHER_CONSUMER
    assert decide([consent(purpose="research")], CARE_TEAM, NOW) is Withheld.OTHER_PURPOSE


def test_a_new_grant_after_a_withdrawal_serves_again() -> None:
    assert decide([consent(withdrawn=NOW - timedelta(hours=1)), consent()], CARE_TEAM,
                  NOW) is None


def lines(*subjects: object) -> bytes:
    return b"".join(json.dumps({"patient": s, "n": i}).encode() + b"\n"
                    for i, s in enumerate(subjects))


def test_the_gate_serves_consenting_subjects_only_and_counts_the_others() -> None:
    register = Register({"p1": (consent(),), "p2": (consent(withdrawn=NOW),)})
    gate = RecordGate("patient", CARE_TEAM)
    data = lines("p1", "p2", "p3", "p1") + b'{"other": 1}\n' + b"not json\n"
    out = gate.take(data, register, NOW)
    assert [json.loads(x)["n"] for x in out.splitlines()] == [0, 3]
    assert gate.served == 2
    assert gate.withheld == {Withheld.WITHDRAWN: 1, Withheld.NO_CONSENT: 1,
                             Withheld.NO_SUBJECT: 2}
    account = gate.account()
    assert account == ("consent: 2 records served, 4 withheld (no subject field 2, "
                       "no consent 1, withdrawn 1)")
    assert "p2" not in account and "p3" not in account


def test_records_split_across_chunks_are_judged_whole() -> None:
    register = Register({"p1": (consent(),)})
    gate = RecordGate("patient", CARE_TEAM)
    data = lines("p1", "p2", "p1")
    out = b"".join(gate.take(data[i:i + 7], register, NOW) for i in range(0, len(data), 7))
    assert out == lines("p1", "p2", "p1").splitlines(keepends=True)[0] + \
        lines("p1", "p2", "p1").splitlines(keepends=True)[2]


def test_a_withdrawal_between_chunks_holds_from_the_next_record() -> None:
    gate = RecordGate("patient", CARE_TEAM)
    before = Register({"p1": (consent(),), "p2": (consent(),)})
    after = Register({"p1": (consent(),), "p2": (consent(withdrawn=NOW),)})
    first = gate.take(lines("p1", "p2"), before, NOW)
    second = gate.take(lines("p1", "p2"), after, NOW)
    assert first.count(b'"p2"') == 1 and second.count(b'"p2"') == 0
    assert second.count(b'"p1"') == 1


def test_expiry_holds_mid_stream_too() -> None:
    gate = RecordGate("patient", CARE_TEAM)
    register = Register({"p1": (consent(until=NOW + timedelta(seconds=1)),)})
    assert gate.take(lines("p1"), register, NOW) != b""
    assert gate.take(lines("p1"), register, NOW + timedelta(seconds=1)) == b""
    assert gate.withheld == {Withheld.EXPIRED: 1}


def test_a_resumed_pull_skips_the_records_already_served() -> None:
    register = Register({"p1": (consent(),)})
    gate = RecordGate("patient", CARE_TEAM, skip=1)
    out = gate.take(lines("p1", "p2", "p1", "p1"), register, NOW)
    assert [json.loads(x)["n"] for x in out.splitlines()] == [2, 3]


def test_without_a_subject_field_nothing_is_served() -> None:
    gate = RecordGate("", CARE_TEAM)
    assert gate.take(lines("p1"), Register({"p1": (consent(),)}), NOW) == b""


CONSENT_POLICY = {
    "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"], "@type": "Offer",
    "permission": [{"action": "use", "constraint": [
        {"leftOperand": "membership", "operator": "eq", "rightOperand": "care-team"},
        {"leftOperand": "consent", "operator": "eq", "rightOperand": "care"}]}]}


def test_the_policy_names_the_purpose_and_the_constraint_holds_as_a_whole() -> None:
    assert consent_purpose(CONSENT_POLICY) == "care"
    assert consent_purpose({"permission": [{"action": "use"}]}) is None
    ctx = PolicyContext(scope=Scope.NEGOTIATION, now=NOW, participant_id=CARE,
                        claims={"membership": "care-team"})
    decision = evaluate(parse_policy(CONSENT_POLICY), ctx)
    assert decision.allowed, decision.reasons
    wrong = json.loads(json.dumps(CONSENT_POLICY))
    wrong["permission"][0]["constraint"][1]["operator"] = "neq"
    assert not evaluate(parse_policy(wrong), ctx).allowed


def test_any_field_name_and_only_text_or_integer_subjects() -> None:
    register = Register({"7": (consent(),), "p1": (consent(),)})
    gate = RecordGate("patient-id", CARE_TEAM)
    data = (b'{"patient-id": 7}\n{"patient-id": true}\n{"patient-id": 7.0}\n'
            b'{"patient-id": ["p1"]}\n{"patient-id": ""}\n[1]\n{"patient-id": "p1"}\n')
    out = gate.take(data, register, NOW)
    assert out == b'{"patient-id": 7}\n{"patient-id": "p1"}\n'
    assert gate.withheld == {Withheld.NO_SUBJECT: 5}


def test_any_chunking_serves_the_same_records() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    register = Register({"p1": (consent(),), "p3": (consent(),)})
    data = lines("p1", "p2", "p3", "p1", 7, None) + b'{"patient": "p3", "x": "\\n"}\n'

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12),
           st.integers(min_value=0, max_value=4))
    def same(cuts: list[int], skip: int) -> None:
        whole = RecordGate("patient", CARE_TEAM, skip=skip)
        expected = whole.take(data, register, NOW)
        gate = RecordGate("patient", CARE_TEAM, skip=skip)
        bounds = [0, *sorted(cuts), len(data)]
        out = b"".join(gate.take(data[a:b], register, NOW) for a, b in pairwise(bounds))
        assert out + gate.finish(register, NOW) == expected
        assert gate.withheld == whole.withheld and gate.served == whole.served

    same()
