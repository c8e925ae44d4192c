"""``make demo``: a small data space on loopback, end to end, each step timed.

A provider and a consumer participant are created in a temporary folder, pinned in each
other's ``trust/``, and started as two separate ``connector run`` processes over HTTPS. The
consumer then reads the provider's catalogue, negotiates a contract and pulls the records,
using the same ``connector`` commands an operator would type.
"""

from __future__ import annotations

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


def _free_ports(count: int) -> int:
    """A loopback port p with p+1 .. p+count-1 free too (a connector's management API
    listens on p+1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            for extra in range(1, count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + extra))
            return port
        except OSError:
            continue
    raise RuntimeError("no free ports")


@dataclass
class Participant:
    """One folder of the demo space and the daemon process serving it."""

    name: str
    dir: Path
    url: str
    command: tuple[str, ...] = ("run",)  # ("registry", "run") for the registry
    process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a ``connector`` command in this participant's folder."""
        return subprocess.run([sys.executable, "-m", "connector.cli", *args, "--dir",
                               str(self.dir)], capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        """Start the daemon and wait for its ready line (RuntimeError naming its log if not)."""
        self.process = start_daemon(self.command, self.dir)
        if self.process is None:
            raise RuntimeError(f"{self.name} did not start; see {self.dir}/state/daemon.log")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the daemon has not ended within 10 s."""
        if self.process is not None:
            stop_daemon(self.process)
        self.process = None


def start_daemon(command: Sequence[str], folder: Path, *, ready_word: bytes = b"ready",
                 timeout_s: float = READY_TIMEOUT_S) -> subprocess.Popen[bytes] | None:
    """``connector COMMAND FOLDER`` with its log in ``FOLDER/state/daemon.log``: the process
    once it printed ``ready_word``; None (the process stopped) if it did not within
    ``timeout_s``."""
    log_path = folder / "state" / "daemon.log"
    log_path.parent.mkdir(exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "connector.cli", *command, str(folder)],
                                   stdout=subprocess.PIPE, stderr=log)
    out = process.stdout
    assert out is not None
    deadline = time.monotonic() + timeout_s
    # select before each readline: a daemon that neither prints nor exits must not hang us.
    while (left := deadline - time.monotonic()) > 0 and select.select([out], [], [], left)[0]:
        line = out.readline()
        if ready_word in line:
            return process
        if not line:
            break
    stop_daemon(process)
    return None


def stop_daemon(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the daemon has not ended within 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running(participants: Sequence[Participant]) -> Iterator[None]:
    try:
        for p in participants:
            p.start()
        yield
    finally:
        for p in participants:
            p.stop()


def create_space(root: Path) -> tuple[Participant, Participant]:
    """A provider and a consumer, each pinning the other."""
    provider, consumer = (Participant(name, root / name, f"https://127.0.0.1:{_free_ports(2)}")
                          for name in ("provider", "consumer"))
    for p in (provider, consumer):
        init_folder(p.dir, name=p.name, url=p.url)
    add_trusted_peer(provider.dir, consumer.dir, attributes={"membership": "active"},
                     tls_cert=None)
    add_trusted_peer(consumer.dir, provider.dir, attributes={}, tls_cert=None)
    return provider, consumer


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

    registry = Participant("registry", root / "registry",
                           f"https://127.0.0.1:{_free_ports(1)}", command=("registry", "run"))
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
