"""The cost of consent per data subject in the data plane: the per-record gate
(``core.consent.RecordGate``) on a 1 MiB-chunked JSON-lines stream, beside the SHA-256 the
copy check computes over the same bytes anyway (``ratio`` = gate CPU / hash CPU, both measured
in this run). Half of 1,000 subjects consent; records of ~240 bytes.

``run(quick)`` returns the JSON lines; ``python -m bench.consent [--quick]`` prints them.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from connector.core.consent import Consent, RecordGate, Register, Requester

RECORDS, QUICK_RECORDS = 200_000, 20_000
CHUNK = 1 << 20  # what adapters.sources reads at a time


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(quick: bool = False) -> list[dict[str, Any]]:
    count = QUICK_RECORDS if quick else RECORDS
    now = datetime.now(UTC)
    until = now + timedelta(days=1)
    register = Register({f"p{i}": (Consent("did:web:care", "care", until),)
                         for i in range(0, 1000, 2)})
    stream = b"".join(json.dumps({"patient": f"p{i % 1000}", "doc": i,
                                  "text": "lorem ipsum " * 16}).encode() + b"\n"
                      for i in range(count))
    chunks = [stream[i:i + CHUNK] for i in range(0, len(stream), CHUNK)]
    gate = RecordGate("patient", Requester("did:web:care", {}, "care"))
    t0 = _cpu()
    for chunk in chunks:
        gate.take(chunk, register, now)
    gated = _cpu() - t0
    t0 = _cpu()
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    hashed = max(_cpu() - t0, 1e-6)
    assert gate.served == count // 2
    return [
        {"name": "consent_gate_cpu_us_per_record", "value": round(gated / count * 1e6, 3),
         "unit": "us"},
        {"name": "consent_gate_mb_per_cpu_s", "value": round(len(stream) / gated / 1e6, 1),
         "unit": "MB/s", "limit": round(len(stream) / hashed / 1e6, 1),
         "ratio": round(hashed / gated, 4)},
    ]


if __name__ == "__main__":
    for line in run(quick="--quick" in sys.argv):
        print(json.dumps(line), flush=True)
