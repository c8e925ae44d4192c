"""Debian packages the tests need (PostgreSQL, HAProxy, Prometheus, Chromium), installed with
apt-get when absent. A test that needs one and cannot have it fails; it never skips."""

from __future__ import annotations

import os
import shutil
import subprocess

# apt-get's own time on a slow mirror; a browser or a database server is a few hundred MB.
APT_TIMEOUT_S = 900


def apt_install(*packages: str, recommends: bool = True) -> str:
    """Install ``packages``; "" on success, else the tail of what apt-get said.

    A fresh machine's package lists may be missing or stale: after a failed install the lists
    are updated once and the install is tried again."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q",
               *([] if recommends else ["--no-install-recommends"]), *packages]

    def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=APT_TIMEOUT_S)

    if run(install).returncode == 0:
        return ""
    update = run(["apt-get", "update", "-q"])
    done = run(install)
    if done.returncode == 0:
        return ""
    return (update.stdout + update.stderr + done.stdout + done.stderr)[-2000:]
