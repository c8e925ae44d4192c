"""The test harness for end-to-end tests, benchmarks and interop runs: free loopback ports,
participant folders pinned to each other, and ``connector`` daemons run as real processes
(``connector run`` over HTTPS on loopback), started until their ready line and stopped.

Used from the repository root (``tests``, ``bench`` and ``interop`` import it as
``tests.harness``); ``make demo`` has its own small runner in ``connector.demo``.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from connector.participant.init import init_folder
from connector.participant.trust import add_trusted_peer

# Start-up must print the ready line within this many seconds (it takes ~0.3 s here).
READY_TIMEOUT_S = 20.0


def keep_sqlite(folder: Path) -> None:
    """Leave a new folder's state in its SQLite file, the embedded default."""


# Where ``create_space`` puts each new folder's state: the end-to-end tests that run on
# PostgreSQL set this to a function giving each folder a database of its own
# for a module at a time (tests/engines.py ``_state_on_engine``).
place_state: Callable[[Path], None] = keep_sqlite


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports are drawn below the ephemeral range: a port the kernel gave us for a moment (bind to 0)
# is one it may give to any outgoing connection of a running daemon before ours binds it, which
# made starts fail with "address already in use" on a busy machine.
PORT_RANGE = (10000, max(10100, _ephemeral_low() - 2))
_draw = random.SystemRandom()
# Ports handed out by this process: nothing listens on one until its daemon starts, so a later
# draw could hand it out again (two set-ups drawing a dozen ports each did collide).
_handed: set[int] = set()


def _bindable(*ports: int) -> bool:
    try:
        with contextlib.ExitStack() as stack:
            for port in ports:
                sock = stack.enter_context(socket.socket())
                sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def free_port() -> int:
    """A loopback port nothing listens on now, outside the ephemeral range."""
    for _ in range(500):
        port = _draw.randrange(*PORT_RANGE)
        if port not in _handed and _bindable(port):
            _handed.add(port)
            return port
    raise RuntimeError("no free port")


def free_port_pair() -> int:
    """A port p with p+1 also free (the management API listens on p+1)."""
    for _ in range(500):
        port = _draw.randrange(*PORT_RANGE)
        if not {port, port + 1} & _handed and _bindable(port, port + 1):
            _handed.update((port, port + 1))
            return port
    raise RuntimeError("no free pair of ports")


@dataclass
class Participant:
    name: str
    dir: Path
    url: str
    process: subprocess.Popen[bytes] | None = None
    command: tuple[str, ...] = ("run",)  # ("registry", "run") for a registry

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a ``connector`` command in this participant's folder."""
        return subprocess.run([sys.executable, "-m", "connector.cli", *args, "--dir",
                               str(self.dir)], capture_output=True, text=True, timeout=timeout)


def new_participant(root: Path, name: str, url: str, *,
                    place: Callable[[Path], None] | None = None) -> Participant:
    """A folder ``root/name`` made as ``connector init`` makes one, its state where ``place``
    (default ``place_state``) puts it."""
    init_folder(root / name, name=name, url=url)
    (place or place_state)(root / name)
    return Participant(name, root / name, url)


def create_space(root: Path, *, consumer_attrs: dict[str, str] | None = None,
                 provider_url: str | None = None, place: Callable[[Path], None] | None = None
                 ) -> tuple[Participant, Participant]:
    """A provider and a consumer, each pinning the other, their state where ``place``
    (default ``place_state``) puts it; ``provider_url``: the provider's public URL (default:
    a free loopback port)."""
    provider, consumer = (
        new_participant(root, name, provider_url if name == "provider" and provider_url
                        else f"https://127.0.0.1:{free_port_pair()}", place=place)
        for name in ("provider", "consumer"))
    attrs = {"membership": "active"} if consumer_attrs is None else consumer_attrs
    add_trusted_peer(provider.dir, consumer.dir, attributes=attrs, tls_cert=None)
    add_trusted_peer(consumer.dir, provider.dir, attributes={}, tls_cert=None)
    return provider, consumer


def start(participant: Participant, extra_env: dict[str, str] | None = None) -> None:
    """Start ``connector run`` and wait for its ready line."""
    log = (participant.dir / "state" / "daemon.log").open("wb")
    env = {**os.environ, **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "connector.cli", *participant.command,
                             str(participant.dir)], stdout=subprocess.PIPE, stderr=log, env=env)
    participant.process = proc
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        # Wait for a line at most until the deadline: a daemon that neither prints nor exits
        # must not hang its caller (a readline alone would block for ever).
        if not select.select([proc.stdout], [], [], left)[0]:
            break
        line = proc.stdout.readline()
        if b"ready" in line:
            return
        if not line and proc.poll() is not None:
            break
    stop(participant)
    raise RuntimeError(f"{participant.name} did not start; see {participant.dir}/state/daemon.log")


def stop(participant: Participant) -> None:
    proc = participant.process
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    participant.process = None


@contextmanager
def running(participants: Sequence[Participant]) -> Iterator[None]:
    try:
        for p in participants:
            start(p)
        yield
    finally:
        for p in participants:
            stop(p)
