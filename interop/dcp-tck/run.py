"""``make dcp-tck``: the Eclipse DCP TCK (1.0.0-RC6) against our connector in DCP mode.

Sets up a throw-away participant folder in DCP mode (an EC P-256 key, as the TCK verifies only
EC keys; the TCK's issuer as trusted issuer of MembershipCredential; no claim caching), starts
it in the test-only profile (``profile.py``, plain HTTP on loopback), runs the two suites that
apply to us through Maven (``pom.xml`` -> ``dcptckrunner.DcpTckMain``), one JVM each:

- ``cs``: ``...presentation.cs``, our Credential Service is the holder's;
- ``verifier``: ``...presentation.verifier``, our DSP catalogue endpoint is the verifier.

Prints one line per test and ``N passed, M failed``; exit 0 all passed, 1 some failed, 2 the
suite did not run. ``DCP_TCK_KEEP=1`` keeps the folder, the connector log and the raw TCK
output; ``--suite cs|verifier`` runs one suite; ``--online`` skips the offline Maven attempt.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from connector.config import load_settings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "common"))
from loopback_dcp import loopback_folder  # noqa: E402
from procs import free_port, start_until_ready, stop_proc  # noqa: E402

POM = HERE / "pom.xml"
MAVEN_TIMEOUT_S = 1800.0
PACKAGE = "org.eclipse.dataspacetck.dcp.verification.presentation."
SUITES = {"cs": "dataspacetck.did.holder", "verifier": "dataspacetck.did.verifier"}
OFFLINE_MISS = re.compile(r"offline mode|has not been downloaded from it before|Could not resolve "
                          r"dependencies|could not be resolved|Could not find artifact", re.I)


@dataclass
class Result:
    suite: str
    method: str
    name: str
    status: str
    message: str


def tck_did(port: int, role: str) -> str:
    """The TCK's own DID for ``role`` when its callback address is http://localhost:PORT."""
    return f"did:web:localhost%3A{port}:{role}"


def make_folder(root: Path, issuers: list[str]) -> tuple[Path, str]:
    """A DCP-mode participant folder on plain HTTP loopback, signing with a P-256 key."""
    folder = root / "cut"
    url = loopback_folder(folder, "dcp-tck-cut", dcp_issuers=issuers,
                          identity="did_cache_s = 0\nstatus_cache_s = 0\n")
    return folder, url


def start_profile(folder: Path, tck_origin: str, secret: str,
                  log: Path) -> subprocess.Popen[bytes]:
    return start_until_ready([sys.executable, str(HERE / "profile.py"), str(folder),
                              "--tck-origin", tck_origin, "--sts-secret", secret],
                             log, "the DCP TCK profile")


def properties(values: dict[str, str], *, holder_is_cut: bool) -> str:
    template = (HERE / "dcp-tck.properties.template").read_text()
    if not holder_is_cut:  # the TCK is the holder: it must use its own (embedded) STS
        template = "\n".join(line for line in template.splitlines()
                             if not line.startswith("dataspacetck.sts.")) + "\n"
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], template)


def run_maven(props: Path, online: bool) -> tuple[int, str]:
    mvn = shutil.which("mvn")
    if mvn is None:
        return 127, "mvn not found on PATH"
    output, rc = "", 0
    for offline in ([] if online else [True]) + [False]:
        cmd = [mvn, *(["-o"] if offline else []), "-q", "-B", "-f", str(POM),
               f"-Dtck.config={props}", "verify"]
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=MAVEN_TIMEOUT_S, cwd=str(HERE))
        except subprocess.TimeoutExpired:
            return 124, output + f"\n[dcp-tck] Maven timed out after {MAVEN_TIMEOUT_S:.0f}s\n"
        rc, output = proc.returncode, proc.stdout
        if "TCK-RESULT\t" in output or not offline or not OFFLINE_MISS.search(output):
            break
        print("[dcp-tck] offline Maven run lacked artifacts; retrying online", file=sys.stderr)
    return rc, output


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m[1], m[1]), text)


def parse(suite: str, output: str) -> tuple[list[Result], bool]:
    results = []
    for line in output.splitlines():
        if line.startswith("TCK-RESULT\t"):
            parts = [*line.split("\t", 4), "", "", "", ""]
            method = unescape(parts[2]).rpartition("#")[2]
            results.append(Result(suite, method, unescape(parts[3]), parts[1],
                                  " ".join(unescape(parts[4]).split())))
    return results, "TCK-SUMMARY\t" in output


def main() -> int:
    ap = argparse.ArgumentParser(description="Run the DCP TCK against our connector.")
    ap.add_argument("--suite", choices=sorted(SUITES), action="append")
    ap.add_argument("--online", action="store_true", help="skip the offline Maven attempt")
    args = ap.parse_args()
    suites = args.suite or list(SUITES)
    root = Path(tempfile.mkdtemp(prefix="connector-dcp-tck-"))
    keep = os.environ.get("DCP_TCK_KEEP") == "1"
    proc = None
    try:
        ports = {s: free_port() for s in suites}
        folder, url = make_folder(root, [tck_did(p, "issuer") for p in ports.values()])
        settings = load_settings(folder)
        secret = secrets.token_urlsafe(16)
        log = root / "connector.log"
        all_results: list[Result] = []
        broken = False
        for suite in suites:
            # one connector per suite: each TCK run has its own DIDs and keys
            origin = f"http://localhost:{ports[suite]}"
            proc = start_profile(folder, origin, secret, log)
            props = root / f"dcp-tck-{suite}.properties"
            props.write_text(properties({
                "TEST_PACKAGE": PACKAGE + suite,
                "TCK_CALLBACK_PORT": str(ports[suite]),
                "CUT_ROLE_KEY": SUITES[suite],
                "CUT_DID": settings.did,
                "CUT_TRIGGER_ENDPOINT": f"{settings.dsp_base}/catalog/request",
                "CUT_STS_URL": f"{url}/tck/sts",
                "CUT_STS_CLIENT_ID": "dcp-tck",
                "CUT_STS_CLIENT_SECRET": secret,
            }, holder_is_cut=suite == "cs"))
            print(f"[dcp-tck] suite {suite}: connector {url} ({settings.did}), TCK {origin}",
                  file=sys.stderr)
            rc, output = run_maven(props, args.online)
            (root / f"tck-{suite}-raw.log").write_text(output)
            stop_proc(proc)
            proc = None
            results, complete = parse(suite, output)
            if not results or not complete:
                sys.stderr.write(output[-4000:])
                print(f"[dcp-tck] suite {suite} did not complete (maven exit {rc})",
                      file=sys.stderr)
                broken = True
            all_results += results
        passed = failed = 0
        for r in all_results:
            label = f"{r.status:<8} {r.suite:<8} {r.method:<58} {r.name}"
            if r.status == "PASSED":
                passed += 1
                print(label)
            elif r.status == "SKIPPED":
                print(f"{label} :: {r.message}")
            else:
                failed += 1
                print(f"{label} :: {r.message}")
        skipped = sum(r.status == "SKIPPED" for r in all_results)
        print(f"[dcp-tck] suites run: {', '.join(suites)}; {skipped} skipped (@Disabled)",
              file=sys.stderr)
        print(f"{passed} passed, {failed} failed")
        if broken or not all_results:
            return 2
        return 0 if failed == 0 else 1
    finally:
        stop_proc(proc)
        if keep:
            print(f"[dcp-tck] kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
