"""``make demo``: a small data space on loopback, end to end, each step timed.

A provider and a consumer participant are created in a temporary folder, pinned in each
other's ``trust/``, and started as two separate ``connector run`` processes over HTTPS. The
consumer then reads the provider's catalogue, negotiates a contract and pulls the records,
using the same ``connector`` commands an operator would type.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from connector.participant.init import init_folder
from connector.participant.trust import add_trusted_peer

# Start-up must print the ready line within this many seconds (it takes ~0.3 s here).
READY_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A port p with p+1 also free (the management API listens on p+1)."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
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


def create_space(root: Path, *, consumer_attrs: dict[str, str] | None = None
                 ) -> tuple[Participant, Participant]:
    """A provider and a consumer, each pinning the other."""
    parts = []
    for name in ("provider", "consumer"):
        url = f"https://127.0.0.1:{free_port_pair()}"
        init_folder(root / name, name=name, url=url)
        parts.append(Participant(name, root / name, url))
    provider, consumer = parts
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


class Steps:
    """Prints each step with its timing; raises SystemExit naming the step that failed."""

    def __init__(self) -> None:
        self.n = 0

    def run(self, title: str, participant: Participant, *args: str) -> str:
        self.n += 1
        t0 = time.perf_counter()
        result = participant.cli(*args)
        ms = (time.perf_counter() - t0) * 1000
        if result.returncode != 0:
            print(f"[{self.n}] {title}: FAILED after {ms:.0f} ms\n{result.stderr.strip()}")
            raise SystemExit(f"demo failed at step {self.n}: {title}")
        print(f"[{self.n}] {title} ({ms:.0f} ms)")
        for line in result.stdout.strip().splitlines():
            print(f"      {line}")
        return result.stdout.strip()


def create_registry(root: Path, members: Sequence[Participant]) -> Participant:
    """A catalogue-metadata registry the participants publish to and search."""
    from connector.registry.daemon import init_registry
    from connector.registry.membership import join_registry

    registry = Participant("registry", root / "registry", f"https://127.0.0.1:{free_port()}",
                           command=("registry", "run"))
    init_registry(registry.dir, url=registry.url)
    for member in members:
        join_registry(member.dir, registry.dir)
    return registry


def find_through_registry(consumer: Participant, query: str, timeout: float = 10.0) -> str:
    """The provider's URL, as the registry knows it (its first publication is asynchronous)."""
    from connector.core.errors import ConnectorError
    from connector.registry.search import find_provider_url

    deadline = time.monotonic() + timeout
    while True:
        try:
            return find_provider_url(consumer.dir, query)
        except ConnectorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="connector-demo-"))
    steps = Steps()
    try:
        t0 = time.perf_counter()
        provider, consumer = create_space(root)
        (consumer.dir / "datasets" / "example.toml").unlink()  # the consumer offers nothing
        registry = create_registry(root, [provider, consumer])
        print(f"[0] created provider, consumer and registry folders in {root} "
              f"({(time.perf_counter() - t0) * 1000:.0f} ms)")
        t0 = time.perf_counter()
        with running([registry, provider, consumer]):
            print(f"[0] started the registry and both daemons over HTTPS "
                  f"({(time.perf_counter() - t0) * 1000:.0f} ms): provider {provider.url}, "
                  f"consumer {consumer.url}, registry {registry.url}")
            t0 = time.perf_counter()
            found = find_through_registry(consumer, "weather")
            steps.n += 1
            print(f"[{steps.n}] discovery: the registry names the provider of 'weather' data: "
                  f"{found} ({(time.perf_counter() - t0) * 1000:.0f} ms)")
            steps.run("search: the same through `connector search`", consumer, "search", "weather")
            steps.run("catalogue: the offers the provider shows the consumer", consumer,
                      "catalog", found)
            agreement = steps.run("negotiation: consumer-initiated, to FINALIZED", consumer,
                                  "negotiate", found, "example-weather")
            out = root / "received.jsonl"
            steps.run("transfer: HTTP pull of the records, count and SHA-256 verified", consumer,
                      "transfer", agreement, "--out", str(out))
            steps.run("status on the consumer", consumer, "status")
            records = sum(1 for line in out.read_text().splitlines() if line.strip())
            expected = (provider.dir / "data" / "example.jsonl").read_text().count("\n")
            if records != expected:
                raise SystemExit(f"demo failed: received {records} records, expected {expected}")
        print(f"demo ok: {records} records")
        return 0
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    except Exception as exc:  # a step's own error: name it, exit non-zero
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
