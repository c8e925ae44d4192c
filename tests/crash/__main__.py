"""``python -m tests.crash``: the long form of the crash-consistency run (``make soak-crash``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path

from connector.adapters.storage.schema import ENGINES
from tests import harness
from tests.crash.run import CrashRun, Plan, seed_from_env
from tests.e2e.postgres import running_postgres
from tests.stores import on_new_database


def main(argv: list[str] | None = None) -> int:
    """The long form: jobs and kills for ``--seconds``, then the same checks; prints the
    figures as one JSON line and every mismatch; exits 1 if there is any."""
    parser = argparse.ArgumentParser(prog="python -m tests.crash")
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("CRASH_SOAK_S", "300")))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the folders afterwards")
    parser.add_argument("--engine", choices=ENGINES,
                        default=os.environ.get("CRASH_ENGINE", "sqlite"),
                        help="where both daemons keep their state (PostgreSQL: Debian's"
                             " package, a server started for the run)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else seed_from_env()
    plan = Plan(seed=seed, concurrency=args.concurrency, kills=None, seconds=args.seconds,
                kill_gap_s=(2.0, 8.0), down_s=(0.1, 2.0), drain_s=180.0)
    root = Path(tempfile.mkdtemp(prefix="connector-crash-"))
    with contextlib.ExitStack() as stack:
        if args.engine == "postgres":
            server = stack.enter_context(running_postgres())
            harness.place_state = partial(on_new_database, server)
        report = asyncio.run(CrashRun(plan, root).run())
    print(json.dumps({"name": "crash_soak", **report.figures()}))
    if report.mismatches or report.server_errors:
        print(report.explain(), file=sys.stderr)
        return 1
    counts = Counter(k.victims for k in report.kills)
    print(f"crash soak ok ({args.engine}): seed {seed}, kills {dict(counts)}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
