"""Strict ODRL evaluation: the W3C ODRL CG formal-semantics reading, for conformance and for
operators who ask for it (``evaluate(policy, ctx, strict_odrl=True)``).

Theory of operation
-------------------
The default mode follows EDC (every permission must hold, any true constraint triggers a
prohibition, duties are constraints). This mode follows ODRL 2.2 as the formal-semantics
draft and the SolidLab suite read it:

1. A rule applies to the evaluation request (``ctx.request``) when its action equals the
   requested action or includes it (``_INCLUDED_IN``), and its target and assignee — the
   rule's own, else the policy's — equal the requested ones or a collection the state of
   the world puts them in. Without a request every rule applies.
2. Permission active: applies, all constraints hold (or are deferred), and every duty in
   force is fulfilled or pending. A duty is in force unless one of its constraints FAILS;
   a constraint we cannot judge leaves it in force (demanding more never widens a
   permission). Its state comes from ``ctx.duty_states`` by duty ``@id``, then by action;
   a duty the state does not mention is unperformed ("close" behaviour).
3. Prohibition active: applies and ALL its constraints hold (an ERROR counts as holding).
4. Allowed: at least one permission active (permissions are alternatives), no prohibition
   active, every obligation's constraints hold. A policy without permissions denies.
"""

from __future__ import annotations

from connector.core.policy.constraints import (
    ConstraintResult,
    Decision,
    DutyState,
    PolicyContext,
    RuleReport,
    all_hold,
    in_force,
    must_hold,
    unblock,
)
from connector.core.policy.model import Policy, Rule

# ODRL 2.2 Common Vocabulary ``includedIn``: the action a narrower action is part of. ``use``
# and ``transfer`` are the roots; ``write`` is the deprecated spelling of ``modify``.
_INCLUDED_IN: dict[str, str] = {
    **dict.fromkeys((
        "aggregate", "annotate", "anonymize", "archive", "concurrentUse", "derive", "digitize",
        "distribute", "execute", "extract", "grantUse", "index", "install", "modify", "move",
        "present", "read", "reproduce", "stream", "synchronize", "textToSpeech", "transform",
        "translate", "uninstall", "watermark", "write", "include", "delete", "attribute",
        "compensate", "inform", "nextPolicy", "obtainConsent", "reviewPolicy", "acceptTracking",
        "ensureExclusivity"), "use"),
    **dict.fromkeys(("display", "play", "print"), "present"),
    **dict.fromkeys(("give", "sell"), "transfer"),
}


def includes(rule_action: str, requested: str) -> bool:
    """``rule_action`` is ``requested`` or one of the actions it is included in."""
    action: str | None = requested
    while action is not None:
        if action == rule_action:
            return True
        action = _INCLUDED_IN.get(action)
    return False


def evaluate_strict(policy: Policy, ctx: PolicyContext) -> Decision:
    """Decide ``policy`` under strict ODRL semantics (module docstring)."""
    trace: list[ConstraintResult] = []
    reports: list[RuleReport] = []
    permission_traces: list[tuple[int, int]] = []
    for i, rule in enumerate(policy.permissions):
        start = len(trace)
        reports.append(_permission(rule, f"permission[{i}]", policy, ctx, trace))
        permission_traces.append((start, len(trace)))
    permitted = any(report.active for report in reports)
    if permitted:  # a failed alternative does not explain a denial
        for start, end in permission_traces:
            trace[start:end] = unblock(trace[start:end])
    prohibited = False
    for i, rule in enumerate(policy.prohibitions):
        report = _prohibition(rule, f"prohibition[{i}]", policy, ctx, trace)
        reports.append(report)
        prohibited |= report.active
    obliged = True
    for i, rule in enumerate(policy.obligations):
        obliged &= must_hold(rule.constraints, f"obligation[{i}]", ctx, trace)
    return Decision(permitted and not prohibited and obliged, tuple(trace), tuple(reports))


def _permission(rule: Rule, path: str, policy: Policy, ctx: PolicyContext,
                trace: list[ConstraintResult]) -> RuleReport:
    mismatch = _mismatch(rule, policy, ctx)
    if mismatch:
        return RuleReport(path, rule.id, False, mismatch)
    holds = must_hold(rule.constraints, path, ctx, trace)
    unmet = [duty_path for j, duty in enumerate(rule.duties)
             if not _duty_met(duty, duty_path := f"{path}.duty[{j}]", ctx, trace)]
    note = f"duty not performed: {', '.join(unmet)}" if unmet else ""
    return RuleReport(path, rule.id, holds and not unmet, note)


def _prohibition(rule: Rule, path: str, policy: Policy, ctx: PolicyContext,
                 trace: list[ConstraintResult]) -> RuleReport:
    mismatch = _mismatch(rule, policy, ctx)
    if mismatch:
        return RuleReport(path, rule.id, False, mismatch)
    return RuleReport(path, rule.id, all_hold(rule.constraints, path, ctx, trace))


def _duty_met(duty: Rule, path: str, ctx: PolicyContext, trace: list[ConstraintResult]) -> bool:
    """A duty not in force is met; one in force needs a fulfilled or pending state."""
    if not in_force(duty.constraints, path, ctx, trace):
        return True
    state = ctx.duty_states.get(duty.id or "") or ctx.duty_states.get(duty.action)
    return state in (DutyState.FULFILLED, DutyState.PENDING)


def _mismatch(rule: Rule, policy: Policy, ctx: PolicyContext) -> str:
    """Why ``rule`` does not apply to the context's request; empty when it does (or when
    there is no request)."""
    request = ctx.request
    if request is None:
        return ""
    if request.action is not None and not includes(rule.action, request.action):
        return f"action {request.action} is not {rule.action} nor included in it"
    target = rule.target or policy.target
    if target and request.target is not None and target != request.target \
            and target not in request.target_part_of:
        return f"target {request.target} is not {target} nor part of it"
    assignee = rule.assignee or policy.assignee
    if assignee and request.party is not None and assignee != request.party \
            and assignee not in request.party_part_of:
        return f"party {request.party} is not {assignee} nor part of it"
    return ""
