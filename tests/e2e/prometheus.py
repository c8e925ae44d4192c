"""A real Prometheus server for the tests: Debian's ``prometheus`` package, on loopback.

``running_prometheus(targets)`` finds ``prometheus`` (installing the package with apt-get when
it is absent), writes a temporary configuration scraping ``targets`` every second, starts the
server on a free 127.0.0.1 port with a temporary data directory, waits until it is ready and
stops it on leaving. ``query`` asks its HTTP API (``/api/v1/query``). Where Prometheus can be
neither found nor installed the tests fail with the reason, they do not skip.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.debian import apt_install
from tests.harness import free_port

# Prometheus's own start-up (TSDB, web) takes ~1 s; allow for a loaded 2-core machine.
READY_TIMEOUT_S = 60.0


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict[str, object]]:
        """The instant vector of ``expr`` (``data.result``)."""
        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=10) as resp:
            doc = json.load(resp)
        assert doc["status"] == "success", doc
        result: list[dict[str, object]] = doc["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of ``expr``, or None while Prometheus has no sample for it."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        sample = result[0]["value"]
        assert isinstance(sample, list)
        return float(sample[1])

    def wait_for(self, expr: str, at_least: float, timeout: float = 60.0) -> float:
        """Poll until ``expr`` is at least ``at_least`` (scrapes come every second)."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.value(expr)
            if seen is not None and seen >= at_least:
                return seen
            time.sleep(0.5)
        raise AssertionError(f"{expr} stayed at {seen} (< {at_least}) for {timeout} s")


def prometheus_binary() -> str:
    """The ``prometheus`` executable, installing Debian's package first if need be."""
    found = shutil.which("prometheus")
    if found is None:
        failure = apt_install("prometheus", recommends=False)
        found = shutil.which("prometheus")
        if found is None:
            pytest.fail("Prometheus is needed by the metrics tests and could not be installed "
                        "(`apt-get install -y prometheus`; is Debian's archive reachable?):\n"
                        f"{failure}", pytrace=False)
    return found


def _config(targets: Sequence[str]) -> str:
    jobs = "\n".join(
        f"  - job_name: t{i}\n    static_configs:\n      - targets: ['{target}']"
        for i, target in enumerate(targets))
    return f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}\n"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running_prometheus(targets: Sequence[str]) -> Iterator[Prometheus]:
    """A Prometheus server scraping ``targets`` ("127.0.0.1:PORT") every second."""
    binary = prometheus_binary()
    root = Path(tempfile.mkdtemp(prefix="connector-prom-"))
    (root / "prometheus.yml").write_text(_config(targets))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={root / 'prometheus.yml'}",
         f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("prometheus did not become ready:\n"
                                   + (root / "prometheus.log").read_text()[-2000:])
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
