"""``make tck``: the official DSP TCK against a connector in the test-only TCK profile.

Creates a participant folder for the run in a temporary directory, starts
``interop/tck/profile.py`` on loopback (plain HTTP), fills ``tck.properties.template``,
runs the suite through ``run_tck.py`` (which prints one line per test and ``N passed, M
failed``), stops the connector and exits with the suite's status.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from connector.config import load_settings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "common"))
from loopback_dcp import loopback_folder  # noqa: E402
from procs import free_port, start_until_ready, stop_proc  # noqa: E402


def make_folder(root: Path) -> tuple[Path, str]:
    """A participant folder whose public URL is plain HTTP on loopback."""
    folder = root / "cut"
    return folder, loopback_folder(folder, "tck-cut")


def start_profile(folder: Path, authorization: str, log: Path) -> subprocess.Popen[bytes]:
    return start_until_ready([sys.executable, str(HERE / "profile.py"), str(folder),
                              "--authorization", authorization], log, "the TCK profile")


def properties(values: dict[str, str]) -> str:
    template = (HERE / "tck.properties.template").read_text()
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], template)


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="connector-tck-"))
    keep = os.environ.get("TCK_KEEP") == "1"
    proc = None
    try:
        folder, url = make_folder(root)
        authorization = f"Bearer tck-{secrets.token_urlsafe(12)}"
        log = root / "connector.log"
        proc = start_profile(folder, authorization, log)
        settings = load_settings(folder)
        props = root / "tck.properties"
        props.write_text(properties({
            "CUT_PARTICIPANT_ID": settings.did,
            "CUT_DSP_BASE": settings.dsp_base,
            "CUT_ROOT": url,
            "CUT_TCK_AUTHORIZATION": authorization,
            "CUT_WEBHOOK_BASE": f"{url}/tck",
            "TCK_CALLBACK_PORT": str(free_port()),
        }))
        print(f"connector under test: {url} (log {log})", file=sys.stderr)
        result = subprocess.run([sys.executable, str(HERE / "run_tck.py"), str(props),
                                 "--log", str(root / "tck-raw.log"), *sys.argv[1:]])
        return result.returncode
    finally:
        stop_proc(proc)
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
