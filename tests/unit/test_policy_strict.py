"""Strict-ODRL mode against the EDC default, rule by rule (see core/policy/strict.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connector.core.policy import (
    DutyState,
    EvaluationRequest,
    PolicyContext,
    Scope,
    evaluate,
    parse_policy,
)
from connector.core.policy.strict import includes

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ctx(request: EvaluationRequest | None = None, **claims: str) -> PolicyContext:
    return PolicyContext(Scope.CATALOG, NOW, "did:web:alice", claims, request=request,
                         duty_states={"urn:duty:pay": DutyState.FULFILLED})


def atom(left: str, right: str) -> dict[str, Any]:
    return {"leftOperand": left, "operator": "eq", "rightOperand": right}


def both(doc: dict[str, Any], context: PolicyContext) -> tuple[bool, bool]:
    policy = parse_policy(doc)
    return evaluate(policy, context).allowed, evaluate(policy, context, strict_odrl=True).allowed


def test_permissions_are_alternatives_only_in_strict_mode() -> None:
    doc = {"permission": [{"action": "use", "constraint": [atom("purpose", "research")]},
                          {"action": "use", "constraint": [atom("membership", "active")]}]}
    assert both(doc, ctx(purpose="research", membership="lapsed")) == (False, True)


def test_prohibition_needs_all_constraints_only_in_strict_mode() -> None:
    doc = {"permission": [{"action": "use"}],
           "prohibition": [{"action": "use", "constraint": [atom("purpose", "ads"),
                                                            atom("spatial", "US")]}]}
    assert both(doc, ctx(purpose="ads", country="DE")) == (False, True)
    assert both(doc, ctx(purpose="ads", country="US")) == (False, False)


def test_no_permission_denies_only_in_strict_mode() -> None:
    assert both({"@type": "Set"}, ctx()) == (True, False)


def test_strict_mode_matches_action_target_and_party() -> None:
    doc = {"permission": [{"action": "use", "target": "urn:x", "assignee": "urn:club"}]}
    policy = parse_policy(doc)
    member = EvaluationRequest("read", "urn:x", "did:web:alice", frozenset({"urn:club"}))
    assert evaluate(policy, ctx(member), strict_odrl=True).allowed
    for request in (EvaluationRequest("sell", "urn:x", "urn:club"),
                    EvaluationRequest("read", "urn:y", "urn:club"),
                    EvaluationRequest("read", "urn:x", "did:web:bob")):
        decision = evaluate(policy, ctx(request), strict_odrl=True)
        assert not decision.allowed
        assert decision.reasons[0].startswith("permission[0]: ")


def test_action_inclusion_follows_the_odrl_vocabulary() -> None:
    assert includes("use", "read") and includes("use", "print") and includes("present", "play")
    assert includes("transfer", "sell") and not includes("use", "sell")
    assert not includes("read", "use")


def test_duties_in_force_need_a_fulfilled_state() -> None:
    def with_duty(duty_id: str, constraint: list[dict[str, Any]]) -> dict[str, Any]:
        return {"permission": [{"action": "use", "duty": [
            {"@id": duty_id, "action": {"rdf:value": {"@id": "odrl:compensate"},
                                        "refinement": [atom("payAmount", "5")]},
             "constraint": constraint}]}]}
    paid = with_duty("urn:duty:pay", [])
    unpaid = with_duty("urn:duty:other", [])
    not_in_force = with_duty("urn:duty:other", [atom("purpose", "ads")])
    assert both(paid, ctx(purpose="research"))[1]
    assert not both(unpaid, ctx(purpose="research"))[1]
    assert both(not_in_force, ctx(purpose="research"))[1]


def test_rule_reports_in_both_modes() -> None:
    doc = {"permission": [{"@id": "urn:p", "action": "use",
                           "constraint": [atom("purpose", "research")]}],
           "prohibition": [{"@id": "urn:q", "action": "use",
                            "constraint": [atom("spatial", "US")]}]}
    policy = parse_policy(doc)
    for strict in (False, True):
        rules = evaluate(policy, ctx(purpose="research", country="US"), strict_odrl=strict).rules
        assert [(r.path, r.id, r.active) for r in rules] == [
            ("permission[0]", "urn:p", True), ("prohibition[0]", "urn:q", True)]


def test_a_failed_alternative_does_not_block() -> None:
    doc = {"permission": [{"action": "use", "constraint": [atom("purpose", "research")]},
                          {"action": "use", "constraint": [atom("membership", "active")]}]}
    decision = evaluate(parse_policy(doc), ctx(purpose="x", membership="active"),
                        strict_odrl=True)
    assert decision.allowed and decision.reasons == []
    assert not any(result.blocking for result in decision.trace)
