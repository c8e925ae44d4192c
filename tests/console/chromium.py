"""Debian's Chromium for the browser tests: installed with apt-get when absent (browser
downloads are not possible, so Playwright drives the system binary). A machine where it can
be neither found nor installed fails the tests, with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def _found() -> str | None:
    return next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


def _apt_install() -> str:
    """Install Debian's chromium package; the output of what failed, or "" on success."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode == 0:
        return ""
    update = subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                            text=True, timeout=600)
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode == 0:
        return ""
    return (update.stdout + update.stderr + done.stdout + done.stderr)[-2000:]


def chromium_path() -> str:
    path = _found()
    if path is None:
        failure = _apt_install()
        path = _found()
        if path is None:
            pytest.fail("the console's browser tests need Debian's chromium, which could not "
                        f"be installed (`apt-get install -y -q chromium`):\n{failure}")
    return path
