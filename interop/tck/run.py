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
import time
from pathlib import Path

from connector.config import load_settings
from connector.demo import free_port, free_port_pair
from connector.folder import init_folder

HERE = Path(__file__).resolve().parent
READY_TIMEOUT_S = 20.0


def make_folder(root: Path) -> tuple[Path, str]:
    """A participant folder whose public URL is plain HTTP on loopback."""
    port = free_port_pair()
    folder = root / "cut"
    init_folder(folder, name="tck-cut", url=f"https://127.0.0.1:{port}")
    toml = folder / "connector.toml"
    toml.write_text(toml.read_text().replace(f'url = "https://127.0.0.1:{port}"',
                                             f'url = "http://127.0.0.1:{port}"'))
    return folder, f"http://127.0.0.1:{port}"


def start_profile(folder: Path, authorization: str, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(HERE / "profile.py"), str(folder),
                             "--authorization", authorization],
                            stdout=subprocess.PIPE, stderr=log.open("wb"))
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if b"ready" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"the TCK profile did not start; see {log}")


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
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
