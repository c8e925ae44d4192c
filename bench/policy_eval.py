"""Policy engine throughput: evaluations per second of a realistic policy, and parses per second.

The policy is what a data-space offer looks like once agreed: one ``use`` permission with ten
constraints over every kind of left operand the engine enforces (claims, participant id,
time window, elapsed time, delay, use count) including an ``or`` group, plus a prohibition
and a duty. It is parsed once; the timed loop then calls ``evaluate`` in TRANSFER scope (the
per-data-access check, where every constraint is judged). A second loop times
``parse_policy`` on the decoded JSON, a third ``compile_yaml`` + ``parse_policy`` on the same
policy in compact YAML form. Every loop stops at a duration AND a maximum count.

``run(quick)`` returns the JSON lines; ``python -m bench.policy_eval [--quick]`` prints them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from connector.core.policy import PolicyContext, Scope, evaluate, parse_policy
from connector.core.policy.compact import compile_yaml

# A full run measures each loop for this long; --quick is a smoke test, not a measurement.
SECONDS, QUICK_SECONDS = 3.0, 0.3
MAX_CALLS = 5_000_000  # an upper bound on any loop, whatever the clock says

POLICY_YAML = """\
description: Members of the data space, for research or education, from the EU, 2025-2030
permission:
  - action: use
    constraints:
      - membership eq active
      - purpose isAnyOf [research, education]
      - participantId isNoneOf [did:web:banned.example.org]
      - dateTime gteq 2025-01-01T00:00:00Z
      - dateTime lteq 2030-12-31T23:59:59Z
      - elapsedTime lteq P90D
      - delayPeriod gteq PT1H
      - count lteq 1000
      - or:
          - spatial isAnyOf [DE, FR, NL, BE]
          - membership eq gold
      - spatial neq US
    duties:
      - action: notify
        constraints: [purpose neq marketing]
prohibition:
  - action: use
    constraints: [purpose eq marketing]
"""

AGREED = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
CONTEXT = PolicyContext(
    Scope.TRANSFER, AGREED + timedelta(days=10), "did:web:consumer.example.org",
    {"membership": "active", "purpose": "research", "country": "DE"},
    agreement_time=AGREED, use_count=42)


def _rate(call: Callable[[], Any], seconds: float) -> tuple[float, int]:
    """Calls per second of ``call`` over about ``seconds`` (batches of 100 between clock reads)."""
    calls, start = 0, time.perf_counter()
    deadline = start + seconds
    while calls < MAX_CALLS:
        for _ in range(100):
            call()
        calls += 100
        if time.perf_counter() >= deadline:
            break
    return calls / (time.perf_counter() - start), calls


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure; return one JSON-ready dict per figure."""
    seconds = QUICK_SECONDS if quick else SECONDS
    doc = compile_yaml(POLICY_YAML, "bench.yaml")
    text = json.dumps(doc)
    policy = parse_policy(doc)
    decision = evaluate(policy, CONTEXT)
    atoms = sum(1 for result in decision.trace if result.left_operand)
    if not decision.allowed or atoms < 10:  # a benchmark of the deny path would mislead
        raise RuntimeError(f"bench policy should permit with >= 10 constraints: {decision}")
    evals, n_evals = _rate(lambda: evaluate(policy, CONTEXT), seconds)
    strict, _ = _rate(lambda: evaluate(policy, CONTEXT, strict_odrl=True), seconds)
    parses, _ = _rate(lambda: parse_policy(json.loads(text)), seconds)
    yaml_parses, _ = _rate(lambda: parse_policy(compile_yaml(POLICY_YAML, "bench.yaml")),
                           seconds / 3)
    return [
        {"name": "policy_evaluations_per_s", "value": round(evals, 1), "unit": "eval/s",
         "atomic_constraints": atoms, "calls": n_evals},
        {"name": "policy_evaluations_strict_odrl_per_s", "value": round(strict, 1),
         "unit": "eval/s"},
        {"name": "policy_parses_per_s", "value": round(parses, 1), "unit": "parse/s",
         "input": "JSON text -> json.loads -> parse_policy"},
        {"name": "policy_yaml_compiles_per_s", "value": round(yaml_parses, 1),
         "unit": "parse/s", "input": "YAML text -> compile_yaml -> parse_policy"},
    ]


if __name__ == "__main__":
    for line in run(quick="--quick" in sys.argv[1:]):
        print(json.dumps(line), flush=True)
