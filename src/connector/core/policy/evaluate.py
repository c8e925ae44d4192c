"""Decide a parsed ODRL policy against a context: pure, deterministic, no IO.

How each constraint is judged (four outcomes, logical constraints in three-valued logic) is
``constraints``'s; this module reads the rules as EDC does, ``strict`` as ODRL's formal
semantics do.

Rules, following EDC's policy engine (its cases, edc-01 to edc-19, are
``tests/conformance/odrl/edc-cases.json``):

1. Every permission must hold (EDC: conjunctive, edc-07): all its constraints, and all the
   constraints of its duties (duties are checked as constraints, not tracked as performed).
2. Every policy-level obligation: all its constraints must hold (edc-11).
3. A prohibition denies when ANY of its top-level constraints holds (EDC checks constraint by
   constraint, edc-10; ODRL 2.2 would need all). A prohibition without constraints never
   denies (EDC: no constraint, no violation) — ``connector policy check`` warns about it.
4. No rules at all: permit (an open offer, edc-01).

Every rule is evaluated whatever its action: the connector decides one use of one dataset,
and DSP policies name ``use``. (EDC drops rules whose action is not bound to the scope.)

Strict ODRL (``evaluate(..., strict_odrl=True)``), the reading of the W3C ODRL CG formal
semantics and the SolidLab test suite (``tests/conformance/odrl/README.md``):

* A rule applies only to a matching request (``ctx.request``, if given): its action is the
  requested one or includes it (ODRL 2.2 vocabulary ``includedIn``: ``read`` is a ``use``),
  its target and assignee (the rule's, else the policy's) are the requested ones or
  collections they are part of.
* A permission is *active* when it applies, all its constraints hold and every duty in force
  (all the duty's constraints hold or cannot be judged) is fulfilled or still pending in
  ``ctx.duty_states``; a duty the state does not mention is unperformed (the "close"
  behaviour). Permissions are alternatives: one active permission suffices.
* A prohibition is active when it applies and ALL its constraints hold.
* Allowed: some permission active, no prohibition active, obligations as above. No
  permission at all denies (close world). ERROR still never passes: it keeps a permission
  inactive and makes a prohibition active.

``Decision.rules`` reports each rule's activation in both modes (like a compliance report).

"""

from __future__ import annotations

from connector.core.policy.constraints import (
    ConstraintResult,
    Decision,
    PolicyContext,
    RuleReport,
    must_hold,
    none_hold,
)
from connector.core.policy.model import Policy, Rule
from connector.core.policy.strict import evaluate_strict

# --- decision ---------------------------------------------------------------------------------


def evaluate(policy: Policy, ctx: PolicyContext, *, strict_odrl: bool = False) -> Decision:
    """Decide ``policy`` in ``ctx``: permissions, then prohibitions, then obligations.

    ``strict_odrl`` selects the ODRL formal-semantics reading (module docstring) instead of
    EDC's; the connector's wire-facing decisions use the default.
    """
    if strict_odrl:
        return evaluate_strict(policy, ctx)
    trace: list[ConstraintResult] = []
    reports: list[RuleReport] = []
    allowed = True
    for i, rule in enumerate(policy.permissions):
        holds = permission_holds(rule, f"permission[{i}]", ctx, trace)
        reports.append(RuleReport(f"permission[{i}]", rule.id, holds))
        allowed &= holds
    for i, rule in enumerate(policy.prohibitions):
        not_triggered = none_hold(rule.constraints, f"prohibition[{i}]", ctx, trace)
        reports.append(RuleReport(f"prohibition[{i}]", rule.id, not not_triggered))
        allowed &= not_triggered
    for i, rule in enumerate(policy.obligations):
        allowed &= must_hold(rule.constraints, f"obligation[{i}]", ctx, trace)
    return Decision(allowed, tuple(trace), tuple(reports))


def permission_holds(rule: Rule, path: str, ctx: PolicyContext,
                     trace: list[ConstraintResult]) -> bool:
    """EDC PolicyEvaluator.visitPermission: duties' constraints first, then the rule's own."""
    holds = True
    for j, duty in enumerate(rule.duties):
        holds &= must_hold(duty.constraints, f"{path}.duty[{j}]", ctx, trace)
    return must_hold(rule.constraints, path, ctx, trace) and holds


