"""Debian's Chromium for the browser tests: installed with apt-get when absent (browser
downloads are not possible, so Playwright drives the system binary). A machine where it can
be neither found nor installed fails the tests, with the reason."""

from __future__ import annotations

import os

import pytest

from tests.debian import apt_install

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def _found() -> str | None:
    return next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


def chromium_path() -> str:
    path = _found()
    if path is None:
        failure = apt_install("chromium")
        path = _found()
        if path is None:
            pytest.fail("the console's browser tests need Debian's chromium, which could not "
                        f"be installed (`apt-get install -y -q chromium`):\n{failure}")
    return path
