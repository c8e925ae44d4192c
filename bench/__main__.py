"""``python -m bench [NAME ...] [--quick]``: run the benchmarks, one JSON object per line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench import log


def _negotiation(quick: bool) -> None:
    from bench import negotiation

    negotiation.run(quick=quick)


def _policy(quick: bool) -> None:
    import json

    from bench import policy_eval

    for line in policy_eval.run(quick):
        print(json.dumps(line), flush=True)


def _transfer(quick: bool) -> None:
    from bench import transfer

    transfer.run(quick=quick)


def _metrics(quick: bool) -> None:
    from bench import metrics_cost

    metrics_cost.run(quick=quick)


def _registry(quick: bool) -> None:
    import json

    from bench import registry

    for line in registry.run(quick):
        print(json.dumps(line), flush=True)


def _audit(quick: bool) -> None:
    from bench import audit

    audit.run(quick=quick)


def _gc(quick: bool) -> None:
    from bench import gc_young

    gc_young.run(quick=quick)


def _json_depth(quick: bool) -> None:
    import json

    from bench import json_depth

    for line in json_depth.run(quick):
        print(json.dumps(line), flush=True)


def _replicas(quick: bool) -> None:
    from bench import replicas

    replicas.run(quick=quick)


def _console(quick: bool) -> None:
    from bench import console

    console.run(quick=quick)


def _consent(quick: bool) -> None:
    import json

    from bench import consent

    for line in consent.run(quick):
        print(json.dumps(line), flush=True)


def _labs(quick: bool) -> None:
    from bench import labs

    labs.run(quick=quick, labs=SIZES.get("labs"))


def _reusers(quick: bool) -> None:
    from bench import reusers

    reusers.run(quick=quick, reusers=SIZES.get("reusers"))


# --labs N, --reusers N: the sizes of those two benchmarks (their defaults otherwise).
SIZES: dict[str, int] = {}

BENCHMARKS: dict[str, Callable[[bool], None]] = {
    "policy": _policy,
    "registry": _registry,
    "negotiation": _negotiation,
    "transfer": _transfer,
    "metrics": _metrics,
    "audit": _audit,
    "gc": _gc,
    "json_depth": _json_depth,
    "replicas": _replicas,
    "console": _console,
    "consent": _consent,
    "labs": _labs,
    "reusers": _reusers,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true",
                        help="short runs (a smoke test, not a measurement)")
    parser.add_argument("--labs", type=int, metavar="N",
                        help="laboratory daemons in `labs` (default 100; 10 with --quick)")
    parser.add_argument("--reusers", type=int, metavar="N",
                        help="distinct consumers in `reusers` (default 1000; 50 with --quick)")
    args = parser.parse_args(argv)
    SIZES.update({k: v for k, v in (("labs", args.labs), ("reusers", args.reusers))
                  if v is not None})
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; "
                     f"known: {', '.join(BENCHMARKS)}")
    failed = 0
    for name in args.names or list(BENCHMARKS):
        log(f"== {name}{' (quick)' if args.quick else ''}")
        try:
            BENCHMARKS[name](args.quick)
        except Exception as exc:  # report, run the others, exit non-zero
            log(f"{name} FAILED: {type(exc).__name__}: {exc}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
