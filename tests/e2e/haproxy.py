"""A real HAProxy (Debian's package) in TCP mode in front of connector replicas.

``balancer(port, backends, root)`` writes a configuration like deploy/haproxy/haproxy.cfg
(TLS passes through: each replica serves the participant's certificate), starts ``haproxy``
in the foreground and stops it on leaving. The ``haproxy`` package is installed with apt-get
when absent; where it can be neither found nor installed the test fails, it does not skip.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.debian import apt_install

READY_TIMEOUT_S = 30.0


def haproxy_bin() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").is_file() else None)
    if found is None:
        failure = apt_install("haproxy")
        found = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").is_file() else None)
        if found is None:
            pytest.fail("HAProxy is needed by the replica tests and could not be installed "
                        f"(`apt-get install -y -q haproxy`):\n{failure}", pytrace=False)
    return found


def config(port: int, backends: Sequence[int], stats: Path) -> str:
    """TCP mode, round robin, a replica out of rotation 1 s after it stops answering."""
    servers = "\n".join(f"    server replica{i} 127.0.0.1:{p} check inter 300ms fall 2 rise 1"
                        f" on-marked-down shutdown-sessions"
                        for i, p in enumerate(backends))
    return f"""global
    maxconn 4096
    stats socket {stats} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 2
    option redispatch

frontend connector
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
{servers}
"""


def sessions(stats: Path) -> dict[str, int]:
    """Connections each replica has taken so far (HAProxy's ``stot``)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(stats))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("svname", "").startswith("replica"):
            out[row["svname"]] = int(row["stot"] or 0)
    return out


@contextlib.contextmanager
def balancer(port: int, backends: Sequence[int], root: Path) -> Iterator[Path]:
    """HAProxy listening on ``port``; yields its stats socket."""
    stats = root / "haproxy.sock"
    cfg = root / "haproxy.cfg"
    cfg.write_text(config(port, backends, stats))
    log = (root / "haproxy.log").open("wb")
    proc = subprocess.Popen([haproxy_bin(), "-db", "-f", str(cfg)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not stats.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start; see {root / 'haproxy.log'}")
            time.sleep(0.05)
        yield stats
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _admin(stats: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(stats))
        s.sendall(command.encode() + b"\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode()


def only(stats: Path, index: int, count: int = 2) -> None:
    """Send every new connection to replica ``index``: the others go to maintenance and
    their open connections are cut (a client's keep-alive connection sticks to a replica)."""
    for i in range(count):
        if i == index:
            _admin(stats, f"set server replicas/replica{i} state ready")
        else:
            _admin(stats, f"set server replicas/replica{i} state maint")
            _admin(stats, f"shutdown sessions server replicas/replica{i}")


def all_ready(stats: Path, count: int = 2) -> None:
    """Every replica back in the rotation (as ``only`` found them)."""
    for i in range(count):
        _admin(stats, f"set server replicas/replica{i} state ready")
