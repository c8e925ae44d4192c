"""Child processes of the interop harnesses: start one, wait for its ``ready`` line, stop it."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Free loopback ports come from the tests' harness; interop runs inside the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.harness import free_port, free_port_pair

__all__ = ["free_port", "free_port_pair", "start_until_ready", "stop_proc"]

READY_TIMEOUT_S = 20.0


def start_until_ready(cmd: Sequence[str], log: Path, what: str, *,
                      timeout_s: float = READY_TIMEOUT_S) -> subprocess.Popen[bytes]:
    """Run ``cmd`` (stderr appended to ``log``) until it prints a line containing ``ready``.

    RuntimeError naming ``log`` if it exits or stays silent for ``timeout_s``.
    """
    with log.open("ab") as err:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=err)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([proc.stdout], [], [], left)[0]:
            break  # silent until the deadline: do not block on readline for ever
        line = proc.stdout.readline()
        if b"ready" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    stop_proc(proc)
    raise RuntimeError(f"{what} did not start; see {log}")


def stop_proc(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s; nothing if it already ended."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
