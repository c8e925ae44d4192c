"""ODRL 2.2 usage policies as DSP 2025-1 carries them: parse, evaluate, check.

``parse_policy`` builds a typed model (``model``), ``evaluate`` decides it against a
``PolicyContext`` (``evaluate``), and ``check.check_policy_document`` lints a policy file for
``connector policy check`` (JSON, or the compact YAML form ``compact.compile_yaml`` turns into
the same JSON). ``evaluate(..., strict_odrl=True)`` reads a policy as the ODRL formal semantics
do (``strict``). All of it is pure: no IO, time comes in the context.
"""

from connector.core.policy.constraints import (
    ConstraintResult,
    Decision,
    DutyState,
    EvaluationRequest,
    PolicyContext,
    RuleReport,
    Scope,
    enforced_operands,
)
from connector.core.policy.evaluate import evaluate
from connector.core.policy.model import Policy, parse_policy

__all__ = [
    "ConstraintResult",
    "Decision",
    "DutyState",
    "EvaluationRequest",
    "Policy",
    "PolicyContext",
    "RuleReport",
    "Scope",
    "enforced_operands",
    "evaluate",
    "parse_policy",
]
