"""The lab-results example (SI-DEP): laboratories push their daily results to the national
aggregator, under a policy naming the aggregator and the purpose, each batch verified and every
result taken once. See README.md next to this file.

Run from the repository root: ``make examples``, or
``.venv/bin/python examples/lab-results/run.py [N]`` (N laboratories, 3 by default).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from sidep import (  # noqa: E402
    DATASET,
    DAY,
    POLICY,
    PURPOSE,
    NationalTable,
    build,
    lab_code,
)
from space import Daemon, check, main, running  # noqa: E402

RECORDS = 40  # results per laboratory and day in the small size


def push(aggregator: Daemon, lab: Daemon, agreement: str, out: Path) -> str:
    """``connector transfer AGREEMENT --push``: the laboratory pushes, the aggregator's daemon
    checks count and SHA-256 against the laboratory's summary before it completes."""
    done = aggregator.cli("transfer", agreement, "--push", "--out", str(out)).stdout.strip()
    check("verified (pushed)" in done, f"{lab.name}'s push was not verified: {done!r}")
    return done


def story(root: Path, n: int) -> None:
    space = build(root, n, RECORDS, others=("regional-agency",))
    aggregator, labs, agency = space.aggregator, space.labs, space.others[0]
    print(f"[1] the ministry {space.authority_did} admitted the aggregator and regional-agency "
          f"(purpose {PURPOSE}) and {n} laboratories (membership credentials; the laboratories "
          "pin nobody)")
    print(f"[2] each laboratory offers {DATASET} of {DAY} under {POLICY}: to "
          f"{aggregator.did()} only, for {PURPOSE}", flush=True)
    table = NationalTable(root / "national.db")
    sent = 0
    with running(space.daemons()):
        agreements = {}
        for lab in labs:
            agreement = agreements[lab.name] = aggregator.negotiate(lab.url, DATASET)
            batch = root / f"{lab.name}.jsonl"
            done = push(aggregator, lab, agreement, batch)
            source = (lab.dir / "data" / f"{DATASET}.jsonl").read_bytes()
            check(batch.read_bytes() == source, f"{lab.name}'s batch differs from its results")
            got = table.ingest(batch)
            check(got.duplicates == 0, f"{lab.name}'s first batch had {got.duplicates} known ids")
            sent += got.records
            print(f"[3] {lab.name}: agreement {agreement}, pushed and verified, national "
                  f"table +{got.added}")
            print(f"      {done.split(' -> ')[0]}")
        check(table.count() == sent == n * RECORDS,
              f"the national table holds {table.count()} results, {sent} were sent")
        for i, lab in enumerate(labs, 1):
            source = (lab.dir / "data" / f"{DATASET}.jsonl").read_text()
            check(table.count(lab_code(i)) == len(source.splitlines()),
                  f"the table does not hold each of {lab.name}'s results once")
        print(f"[4] national table: {table.count()} results from {n} laboratories, each "
              f"exactly once ({' + '.join(str(RECORDS) for _ in labs)} sent)")
        first = labs[0]
        again = push(aggregator, first, agreements[first.name], root / "again.jsonl")
        got = table.ingest(root / "again.jsonl")
        check(got.added == 0 and got.duplicates == RECORDS,
              f"a second delivery added {got.added} results")
        print(f"[5] {first.name} pushes the same batch again ({again.split(' records')[0]} "
              f"records, verified): {got.duplicates} duplicates detected by result id, "
              f"{got.added} added; the table still holds {table.count()}")
        refused = agency.cli("negotiate", first.url, DATASET, ok=False)
        reason = (refused.stderr + refused.stdout).strip()
        check(refused.returncode != 0, "regional-agency obtained the laboratory's results")
        check("participantId" in reason, f"the refusal does not name participantId: {reason!r}")
        print(f"[6] regional-agency (a member, purpose {PURPOSE}, not the aggregator) asks "
              f"{first.name}: refused")
        for line in reason.splitlines():
            print(f"      {line}")
    table.close()


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    sys.exit(main("lab-results", lambda root: story(root, size)))
