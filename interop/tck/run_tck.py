#!/usr/bin/env python3
"""Run the Eclipse DSP TCK (DSP 2025-1) against a connector under test and summarise the results.

Usage:
    python3 interop/tck/run_tck.py path/to/tck.properties [--timeout SECONDS] [--online] [--quiet]

The properties file is a filled-in copy of interop/tck/tck.properties.template. The suite
runs through Maven (interop/tck/pom.xml -> tckrunner.TckMain -> JUnit Platform); Maven is
first tried offline (-o) and, if dependencies or plugins are missing from ~/.m2, once more
online. Output: one line per test ("PASSED  CN:01-01  <display name>" or
"FAILED  CN:01-01  <display name> :: <message>"), then exactly "N passed, M failed" on its
own line. Exit status: 0 when every test passed, 1 when any failed, 2 when the suite could
not run (bad arguments, Maven or the TCK did not start, timeout).

Standard library only (Python 3.11).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
RESULT_PREFIX = "TCK-RESULT\t"
SUMMARY_PREFIX = "TCK-SUMMARY\t"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TEST_ID = re.compile(r"^([A-Z]+(?:_C)?:\d{2}-\d{2})\s*:?\s*(.*)$")
# Maven messages meaning "something needed is not in the local repository" (offline attempt failed)
OFFLINE_MISS = re.compile(
    r"offline mode|has not been downloaded from it before|Could not resolve dependencies|"
    r"could not be resolved|Cannot access .* in offline mode|Could not find artifact",
    re.IGNORECASE,
)


@dataclass
class TestResult:
    test_id: str
    name: str
    status: str  # PASSED, FAILED, ABORTED, SKIPPED
    message: str


def unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse(output: str) -> tuple[list[TestResult], bool]:
    results: list[TestResult] = []
    summary_seen = False
    for raw in output.splitlines():
        line = ANSI.sub("", raw)
        if line.startswith(SUMMARY_PREFIX):
            summary_seen = True
            continue
        if not line.startswith(RESULT_PREFIX):
            continue
        parts = line.split("\t", 3)
        if len(parts) < 3:
            continue
        status, display = parts[1], unescape(parts[2])
        message = unescape(parts[3]) if len(parts) > 3 else ""
        m = TEST_ID.match(display)
        test_id, name = (m.group(1), m.group(2)) if m else ("?", display)
        results.append(TestResult(test_id, name, status, message))
    return results, summary_seen


def run_maven(props: Path, offline: bool, timeout: float, java_home: str | None) -> tuple[int, str]:
    mvn = shutil.which("mvn")
    if mvn is None:
        return 127, "mvn not found on PATH"
    cmd = [mvn, "-q", "-B", "-f", str(POM), f"-Dtck.config={props}", "verify"]
    if offline:
        cmd.insert(1, "-o")
    env = dict(os.environ)
    if java_home:
        env["JAVA_HOME"] = java_home
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            env=env,
            cwd=str(HERE),
        )
    except subprocess.TimeoutExpired as exc:
        out = (
            exc.stdout.decode(errors="replace")
            if isinstance(exc.stdout, bytes)
            else (exc.stdout or "")
        )
        return 124, out + f"\n[run_tck] timed out after {timeout:.0f}s\n"
    return proc.returncode, proc.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the DSP TCK against a connector under test.")
    ap.add_argument(
        "properties", help="filled-in TCK properties file (see tck.properties.template)"
    )
    ap.add_argument(
        "--timeout", type=float, default=3600, help="overall timeout in seconds (default 3600)"
    )
    ap.add_argument("--online", action="store_true", help="skip the offline Maven attempt")
    ap.add_argument(
        "--quiet", action="store_true", help="do not echo the raw TCK output on failure to start"
    )
    ap.add_argument("--log", help="also write the raw Maven/TCK output to this file")
    ap.add_argument(
        "--java-home", help="JAVA_HOME for Maven and the forked TCK JVM (default: environment)"
    )
    args = ap.parse_args(argv)

    props = Path(args.properties).resolve()
    if not props.is_file():
        print(f"[run_tck] properties file not found: {props}", file=sys.stderr)
        return 2

    started = time.monotonic()
    attempts = [False] if args.online else [True, False]
    rc, output = 0, ""
    for offline in attempts:
        rc, output = run_maven(props, offline, args.timeout, args.java_home)
        results, summary_seen = parse(output)
        if results or not offline or not OFFLINE_MISS.search(output):
            break
        print("[run_tck] offline Maven run lacked artifacts; retrying online", file=sys.stderr)
    elapsed = time.monotonic() - started

    if args.log:
        Path(args.log).write_text(output)

    results, summary_seen = parse(output)
    if not results:
        if not args.quiet:
            sys.stderr.write(output[-6000:])
        print(
            f"[run_tck] the TCK produced no test results (maven exit {rc}, {elapsed:.1f}s)",
            file=sys.stderr,
        )
        print("0 passed, 0 failed")
        return 2

    order = {"MET": 0, "CAT": 1, "CN": 2, "CN_C": 3, "TP": 4, "TP_C": 5}
    results.sort(key=lambda r: (order.get(r.test_id.split(":")[0], 9), r.test_id))
    passed = failed = skipped = 0
    for r in results:
        if r.status == "PASSED":
            passed += 1
            print(f"PASSED   {r.test_id:<10} {r.name}")
        elif r.status == "SKIPPED":
            skipped += 1
            print(f"SKIPPED  {r.test_id:<10} {r.name} :: {r.message}")
        else:
            failed += 1
            msg = " ".join(r.message.split())
            print(f"{r.status:<8} {r.test_id:<10} {r.name} :: {msg}")
    if not summary_seen:
        print(
            "[run_tck] warning: the TCK run ended before its summary (crash or timeout)",
            file=sys.stderr,
        )
        failed += 1 if rc != 0 and failed == 0 else 0
    print(
        f"[run_tck] {len(results)} tests reported, {skipped} skipped (disabled), {elapsed:.1f}s",
        file=sys.stderr,
    )
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and summary_seen else 1


if __name__ == "__main__":
    sys.exit(main())
