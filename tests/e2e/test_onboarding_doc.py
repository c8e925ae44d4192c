"""docs/onboarding.md, run as written: two folders, the public files exchanged as the page
says, both daemons started, and a negotiated transfer that ends verified.

The page's ``sh`` blocks are the script. Only the ports change (8443 and 9443 become free
ones, each with the port above it free for the management API); ``AGREEMENT_ID`` becomes the
id ``connector negotiate`` printed; ``connector run`` is started in the background, as the
page says to do in a terminal of its own.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import READY_TIMEOUT_S, free_port_pair

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "onboarding.md"
CONNECTOR = [sys.executable, "-m", "connector.cli"]


def page_commands() -> list[str]:
    """The command lines of the page's ``sh`` blocks, in order."""
    blocks = re.findall(r"^```sh\n(.*?)^```", PAGE.read_text(), re.DOTALL | re.MULTILINE)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _start(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=log.open("wb"))
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([proc.stdout], [], [], left)[0]:
            break
        line = proc.stdout.readline()
        if b"ready" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"{argv} did not start: {log.read_text()}")


@pytest.fixture
def daemons() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_page_has_every_step() -> None:
    words = [shlex.split(c)[:3] for c in page_commands()]
    assert ["connector", "init", "acme"] in words and ["connector", "trust", "add"] in words
    assert ["connector", "transfer", "AGREEMENT_ID"] in words


def test_onboarding_as_written(tmp_path: Path,
                               daemons: list[subprocess.Popen[bytes]]) -> None:
    ports = {"8443": str(free_port_pair()), "9443": str(free_port_pair())}
    agreement = None
    outputs = []
    for line in page_commands():
        for old, new in ports.items():
            line = line.replace(old, new)
        if agreement is not None:
            line = line.replace("AGREEMENT_ID", agreement)
        argv = shlex.split(line, comments=True)
        if argv[0] != "connector":  # mkdir, cp: as a shell runs them
            done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{line}: {done.stderr}"
            continue
        if argv[1] == "run":
            daemons.append(_start(CONNECTOR + argv[1:], tmp_path,
                                  tmp_path / f"daemon-{len(daemons)}.log"))
            continue
        done = subprocess.run(CONNECTOR + argv[1:], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
        assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
        outputs.append((line, done.stdout))
        if argv[1] == "negotiate":
            agreement = done.stdout.strip()
    transferred = next(out for line, out in outputs if " transfer " in f" {line} ")
    assert "10 records" in transferred and "verified" in transferred
    assert (tmp_path / "weather.jsonl").read_text().count("\n") == 10
    listed = next(out for line, out in outputs if "agreements" in line)
    assert agreement is not None and agreement[-8:] in listed
