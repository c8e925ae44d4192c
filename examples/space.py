"""What every example shares: loopback ports, participant folders, daemons as processes,
``connector`` commands, and a check that exits non-zero on the first mismatch.

The examples run real ``connector run`` daemons over HTTPS on 127.0.0.1, exactly as an
operator would, and drive them with the ``connector`` command line.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from connector import authority
from connector.demo import start_daemon, stop_daemon
from connector.participant import credentials
from connector.participant.init import init_folder

# A daemon must print its ready line within this many seconds (well under one here).
READY_TIMEOUT_S = 30.0


def free_port_pair() -> int:
    """A loopback port p with p+1 also free (a connector's management API listens on p+1)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free pair of loopback ports")


def provider_folder(root: Path, name: str, example: Path) -> Daemon:
    """A participant folder offering the example's own ``policies/``, ``datasets/`` and
    ``data/`` (the templates ``connector init`` writes are removed)."""
    provider = Daemon(name, root / name, f"https://127.0.0.1:{free_port_pair()}")
    init_folder(provider.dir, name=name, url=provider.url)
    for template in (provider.dir / "policies").iterdir():
        template.unlink()
    (provider.dir / "datasets" / "example.toml").unlink()
    (provider.dir / "data" / "example.jsonl").unlink()
    for part in ("policies", "datasets", "data"):
        for path in (example / part).iterdir():
            shutil.copy(path, provider.dir / part / path.name)
    return provider


def consumer_folder(root: Path, name: str) -> Daemon:
    """A participant folder that offers nothing."""
    consumer = Daemon(name, root / name, f"https://127.0.0.1:{free_port_pair()}")
    init_folder(consumer.dir, name=name, url=consumer.url)
    (consumer.dir / "datasets" / "example.toml").unlink()
    return consumer


class Mismatch(Exception):
    """What the example expected did not happen; the message says what."""


def git(folder: Path, *args: str, author: tuple[str, str]) -> str:
    """``git -C folder ARGS`` as ``author`` (name, email): a participant's folder is a git
    repository reviewed like code. Its standard output, stripped."""
    name, email = author
    done = subprocess.run(["git", "-C", str(folder), "-c", f"user.name={name}",
                           "-c", f"user.email={email}", *args],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def check(condition: bool, what: str) -> None:
    """Raise Mismatch(what) unless condition holds."""
    if not condition:
        raise Mismatch(what)


@dataclass
class Daemon:
    """One folder and the process serving it (``connector run``, or another command)."""

    name: str
    dir: Path
    url: str
    command: tuple[str, ...] = ("run",)
    ready_word: bytes = b"ready"
    ready_timeout_s: float = READY_TIMEOUT_S
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def did(self) -> str:
        """The did:web its URL stands for (``did:web:127.0.0.1%3APORT``)."""
        return "did:web:" + self.url.removeprefix("https://").replace(":", "%3A")

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        """``connector ARGS --dir FOLDER``; with ok, a non-zero exit is a Mismatch."""
        done = subprocess.run([sys.executable, "-m", "connector.cli", *args, "--dir",
                               str(self.dir)], capture_output=True, text=True, timeout=120)
        if ok and done.returncode != 0:
            raise Mismatch(f"{self.name}: connector {' '.join(args)} failed:\n"
                           f"{done.stdout}{done.stderr}")
        return done

    def negotiate(self, provider_url: str, dataset: str) -> str:
        """``connector negotiate URL DATASET``: the agreement id, or a Mismatch."""
        agreement = self.cli("negotiate", provider_url, dataset).stdout.strip()
        check(agreement.startswith("urn:"), f"{self.name} got no agreement for {dataset} from "
              f"{provider_url}: {agreement!r}")
        return agreement

    def start(self) -> None:
        """Start the daemon; return once it printed its ready line."""
        self.process = start_daemon(self.command, self.dir, ready_word=self.ready_word,
                                    timeout_s=self.ready_timeout_s)
        if self.process is None:
            raise Mismatch(f"{self.name} did not start; see {self.dir}/state/daemon.log")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.process is not None:
            stop_daemon(self.process)
        self.process = None


def dcp_identity(member: Daemon, authority_did: str, ca_files: Sequence[Path]) -> None:
    """Put ``member`` in DCP mode: a caller is trusted by a membership credential from the
    authority (``[identity]``, docs/settings.md), not pinned; ``ca_files`` are the
    self-signed certificates of the space (a CA bundle file works too)."""
    files = ", ".join(json.dumps(str(p)) for p in ca_files)
    with (member.dir / "connector.toml").open("a") as f:
        f.write(f'\n[identity]\nmode = "dcp"\nrequired_credentials = ["MembershipCredential"]\n'
                f"tls_ca_files = [{files}]\n"
                f"[identity.trusted_issuers]\n{json.dumps(authority_did)} = "
                '["MembershipCredential"]\n')


def admit(authority_dir: Path, member: Daemon, attributes: dict[str, str] | None = None) -> str:
    """``connector authority issue --subject DID [--attr K=V]`` then ``connector credentials
    import`` in the member's folder; returns the credential's id."""
    credential_id, token = authority.issue_credential(authority_dir, subject=member.did(),
                                                      attributes=attributes)
    issued = member.dir / "state" / "membership.jwt"
    issued.write_text(token)
    credentials.import_credential(member.dir, issued)
    return credential_id


@contextlib.contextmanager
def running(daemons: Sequence[Daemon]) -> Iterator[None]:
    """The daemons started in order, all stopped on the way out."""
    try:
        for daemon in daemons:
            daemon.start()
        yield
    finally:
        for daemon in reversed(daemons):
            daemon.stop()


def main(name: str, body: Callable[[Path], None]) -> int:
    """Run an example's body (a callable taking the work folder); 0 if it ended as its
    README says, 1 with the mismatch printed otherwise."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix=f"connector-{name}-"))
    t0 = time.perf_counter()
    try:
        body(root)
    except Mismatch as exc:
        print(f"{name}: MISMATCH: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a step's own error: name it, exit non-zero
        print(f"{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{name} ok ({time.perf_counter() - t0:.1f} s)")
    return 0
