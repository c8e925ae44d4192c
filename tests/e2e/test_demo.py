"""`make demo` itself: two daemons in separate processes, catalogue -> negotiation -> transfer."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end() -> None:
    result = subprocess.run([sys.executable, "-m", "connector.demo"], capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "demo ok: 10 records"
    assert any("negotiation: consumer-initiated, to FINALIZED" in line for line in lines)
    assert any("FINALIZED" in line for line in lines) and any("COMPLETED" in line for line in lines)
