"""The cost of bounding JSON depth before decoding (``codec.within_depth``), next to the
decode it guards, on real DSP bodies; and on a hostile 1 MiB body of flat brackets.

Every DSP and management body, token segment and fetched DID document passes the check, so
it must stay small beside the msgspec decode: ``ratio`` is check time / decode time.

``run(quick)`` returns the JSON lines; ``python -m bench.json_depth [--quick]`` prints them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from connector.core import codec

ROOT = Path(__file__).resolve().parents[1]
BODIES = {
    "catalog-request-edc": ROOT / "tests/interop/captures/"
                                  "interop_01_edc-to-ours_CatalogRequestMessage.json",
    "agreement-full": ROOT / "tests/conformance/dsp/examples/negotiation/"
                             "contract-agreement-message-full.json",
}
SECONDS, QUICK_SECONDS = 1.0, 0.1
MAX_CALLS = 2_000_000


def _per_call_us(fn: Callable[[], object], seconds: float) -> float:
    calls, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds and calls < MAX_CALLS:
        for _ in range(100):
            fn()
        calls += 100
    return elapsed / calls * 1e6


def run(quick: bool = False) -> list[dict[str, Any]]:
    seconds = QUICK_SECONDS if quick else SECONDS
    lines: list[dict[str, Any]] = []
    decoder = msgspec.json.Decoder()  # what codec.decode_json runs after the check
    for name, path in BODIES.items():
        body = path.read_bytes()
        check = _per_call_us(lambda body=body: codec.within_depth(body), seconds)
        decode = _per_call_us(lambda body=body: decoder.decode(body), seconds)
        lines.append({"name": f"json_depth.check.{name}", "value": round(check, 2),
                      "unit": "us", "ratio": round(check / decode, 3)})
    hostile = b'{"a": [' + b"[1,2]," * 175_000 + b"1]}"  # ~1 MiB, depth 3
    lines.append({"name": "json_depth.check.hostile-1MiB-flat", "unit": "ms",
                  "value": round(_per_call_us(lambda: codec.within_depth(hostile),
                                              seconds * 5) / 1000, 1)})
    return lines


if __name__ == "__main__":
    for line in run("--quick" in sys.argv):
        print(json.dumps(line), flush=True)
