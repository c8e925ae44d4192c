"""examples/mobility-edc (EONA-X): joining an EDC-based mobility data space.

A charging-point operator runs our connector; a road operator in the same space runs Eclipse
EDC (0.15.1, with EDC's IdentityHub 0.15.1 as its wallet; ``--edc-version 0.14`` for EDC 0.14.1
with the test wallet). The space's authority issues both their MembershipCredentials (DCP).
Each side offers a dataset to space members only; each consumes the other's; then the
authority revokes each membership in turn and the other side refuses the revoked member.

This is ``make interop``'s DCP flow (``interop/edc/run.py``) with this folder's datasets:
``datasets/``, ``policies/`` and ``data/`` become our connector's; ``edc/traffic-counts.jsonl``
is served to EDC as its asset. Needs Java 17 and Maven (the EDC jars are built once, from Maven
Central, then reused). Exit 0 only if every step passes. See README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "interop" / "edc"))

import run as interop  # noqa: E402  (interop/edc/run.py: make interop's steps)


def furnish(folder: Path) -> None:
    """Our participant folder offers this example's dataset instead of ``connector init``'s."""
    for template in (folder / "policies").iterdir():
        template.unlink()
    (folder / "datasets" / "example.toml").unlink()
    (folder / "data" / "example.jsonl").unlink()
    for part in ("policies", "datasets", "data"):
        for path in (HERE / part).iterdir():
            shutil.copy(path, folder / part / path.name)


def traffic_counts() -> tuple[dict[str, object], ...]:
    lines = (HERE / "edc" / "traffic-counts.jsonl").read_text().splitlines()
    return tuple(json.loads(line) for line in lines if line.strip())


SCENARIO = interop.Scenario(our_dataset="charging-availability",
                            our_data="charging-availability.jsonl",
                            edc_asset="traffic-counts", edc_records=traffic_counts(),
                            furnish=furnish)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edc-version", choices=("0.14", "0.15"), default="0.15")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="connector-mobility-edc-"))
    steps = interop.Steps()
    t0 = time.perf_counter()
    ok: dict[str, bool] = {}
    try:
        ok = interop.run_mode("dcp", root / "dcp", steps, args.edc_version, SCENARIO)
    finally:
        if all(ok.values()) and ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", flush=True)
    passed = bool(ok) and all(ok.values())
    words = {"A": "the road operator (EDC) read our charging availability",
             "B": "we read the road operator's traffic counts",
             "C": "a revoked member is refused, both ways"}
    for key, value in ok.items():
        print(f"   {'PASS' if value else 'FAIL'}: {words[key]}", flush=True)
    print(f"mobility-edc {'ok' if passed else 'FAILED'} (EDC {args.edc_version}, "
          f"{time.perf_counter() - t0:.1f} s)", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
