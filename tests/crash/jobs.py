"""What the consumer's jobs do: negotiate, open a transfer, pull (resuming), complete."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from connector.client import Management
from connector.config import Settings
from connector.core.errors import PeerError
from tests.crash.space import source_of
from tests.harness import Participant

# The job reads its pull slowly (this pause per READ_CHUNK bytes: ~4 MB/s) through a small
# receive window, so that a long pull is still under way when a kill lands.
READ_CHUNK = 16 * 1024
READ_PAUSE_S = 0.004
RECEIVE_WINDOW = 32 * 1024
# A call to a daemon that is down (being restarted) is tried again after this pause.
RETRY_PAUSE_S = 0.2
# A negotiation ends in one of these; a transfer in one of those still waits for the provider.
NEGOTIATION_TERMINAL = ("FINALIZED", "TERMINATED")
TRANSFER_TRANSIENT = ("REQUESTED",)


@dataclass
class Job:
    """One consumer's negotiate-then-pull, as the CLI does it."""

    number: int
    dataset: str
    negotiation: str | None = None  # the acknowledged negotiation's id
    agreement: str | None = None
    transfer: str | None = None  # the acknowledged transfer's id
    verified: bool = False
    completed: bool = False
    failed_calls: int = 0  # POSTs that acknowledged nothing (the daemon died under them)
    resumes: int = 0  # pulls cut and resumed
    problem: str | None = None


class JobFailed(Exception):
    """A job could not finish what was acknowledged: a process ended otherwise than
    expected, a copy did not verify, or a daemon stayed down past the deadline."""


def _small_window(addr_info: Any) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_WINDOW)
    return sock


class SlowReader:
    """``GET /api/transfers/{id}/data`` read slowly through a small receive window."""

    def __init__(self, settings: Settings) -> None:
        self._base = settings.management_url
        self._headers = {"Authorization": f"Bearer {settings.management_token()}"}
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(socket_factory=_small_window, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=30))

    async def close(self) -> None:
        await self._session.close()

    async def append(self, path: str, out: Path) -> None:
        """Append the body to ``out`` as it arrives; aiohttp.ClientError if cut, PeerError
        if refused."""
        async with self._session.get(self._base + path, headers=self._headers) as resp:
            if resp.status >= 300:
                raise PeerError((await resp.read())[:300].decode(errors="replace"),
                                peer_status=resp.status)
            with out.open("ab") as f:
                async for chunk in resp.content.iter_chunked(READ_CHUNK):
                    f.write(chunk)
                    await asyncio.sleep(READ_PAUSE_S)


class Driver:
    """Calls the consumer's management API the way the ``connector`` commands do, riding out
    daemons that die under it."""

    def __init__(self, consumer: Management, reader: SlowReader, provider: Participant,
                 server_errors: list[str], deadline: list[float]) -> None:
        self.api = consumer
        self.reader = reader
        self.provider = provider
        self.server_errors = server_errors  # every 500 a management API answered
        self.deadline = deadline  # [when every call gives up]; moved when the work stops

    def _note(self, exc: PeerError, method: str, path: str) -> None:
        if exc.peer_status == 500:
            self.server_errors.append(f"{method} {path}: {exc.message[:300]}")

    async def call(self, method: str, path: str, body: Any = None, *,
                   api: Management | None = None) -> Any:
        """An idempotent call, repeated while the daemon is down or answers 5xx."""
        while True:
            try:
                return await (api or self.api).call(method, path, body)
            except PeerError as exc:
                if exc.peer_status is not None and exc.peer_status < 500:
                    raise
                self._note(exc, method, path)
                if time.monotonic() > self.deadline[0]:
                    raise JobFailed(f"{method} {path}: {exc.message}") from exc
            except (OSError, TimeoutError) as exc:
                if time.monotonic() > self.deadline[0]:
                    raise JobFailed(f"{method} {path}: {exc}") from exc
            await asyncio.sleep(RETRY_PAUSE_S)

    async def create(self, job: Job, path: str, body: dict[str, Any]) -> str:
        """POST until one answers 201: its id is the acknowledged process."""
        while True:
            try:
                record = await self.api.call("POST", path, body)
                return str(record["id"])
            except PeerError as exc:
                if exc.peer_status is not None and exc.peer_status < 500:
                    raise
                self._note(exc, "POST", path)
            except (OSError, TimeoutError):
                pass
            job.failed_calls += 1
            if time.monotonic() > self.deadline[0]:
                raise JobFailed(f"POST {path} never acknowledged")
            await asyncio.sleep(RETRY_PAUSE_S)

    async def negotiate(self, job: Job) -> None:
        job.negotiation = await self.create(job, "/api/negotiations", {
            "provider": self.provider.url, "datasetId": job.dataset})
        record = await self.call("GET", f"/api/negotiations/{job.negotiation}")
        while record["state"] not in NEGOTIATION_TERMINAL:
            if time.monotonic() > self.deadline[0]:
                raise JobFailed(f"negotiation {job.negotiation} still {record['state']}")
            record = await self.call("GET", f"/api/negotiations/{job.negotiation}?wait=2")
        if record["state"] != "FINALIZED":
            raise JobFailed(f"negotiation {job.negotiation} ended {record['state']}: "
                              f"{record.get('reason')}")
        job.agreement = str(record["agreementId"])

    async def open_transfer(self, job: Job) -> None:
        job.transfer = await self.create(job, "/api/transfers", {"agreementId": job.agreement})
        record = await self.call("GET", f"/api/transfers/{job.transfer}")
        while record["state"] in TRANSFER_TRANSIENT:
            if time.monotonic() > self.deadline[0]:
                raise JobFailed(f"transfer {job.transfer} still {record['state']}")
            await asyncio.sleep(RETRY_PAUSE_S)
            record = await self.call("GET", f"/api/transfers/{job.transfer}")
        if record["state"] != "STARTED":
            raise JobFailed(f"transfer {job.transfer} is {record['state']}: "
                              f"{record.get('reason')}")

    async def pull(self, job: Job, part: Path) -> None:
        """Pull into ``part``, resuming after every cut at the first missing record, then
        check the copy against the provider's summary and its source file."""
        summary = await self.call("GET", f"/api/transfers/{job.transfer}/summary")
        part.write_bytes(b"")
        while True:
            records, _ = whole_records(part)
            if records >= summary["records"]:
                break
            before = part.stat().st_size
            try:
                await self.reader.append(
                    f"/api/transfers/{job.transfer}/data?offset={records}", part)
            except (PeerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                if isinstance(exc, PeerError):
                    if exc.peer_status is not None and exc.peer_status < 500:
                        raise
                    self._note(exc, "GET", "/api/transfers/{id}/data")
                job.resumes += part.stat().st_size > before  # cut mid-way, not refused
                if time.monotonic() > self.deadline[0]:
                    raise JobFailed(f"pull of {job.transfer} never finished") from exc
                await asyncio.sleep(RETRY_PAUSE_S)
        records, sha256 = whole_records(part)
        got = {"records": records, "bytes": part.stat().st_size, "sha256": sha256}
        if got != summary:
            raise JobFailed(f"copy of {job.transfer} {got} != provider's summary {summary}")
        if part.read_bytes() != source_of(self.provider, job.dataset).read_bytes():
            raise JobFailed(f"copy of {job.transfer} differs from the provider's source")
        job.verified = True

    async def complete(self, job: Job) -> None:
        """Complete the verified copy; a call lost to a kill is asked again (a 400 then
        means the lost one did complete it, which the state shows)."""
        path = f"/api/transfers/{job.transfer}"
        while True:
            with contextlib.suppress(PeerError):
                await self.call("POST", f"{path}/complete")
            record = await self.call("GET", path)
            if record["state"] == "COMPLETED":
                job.completed = True
                return
            if record["state"] != "STARTED" or time.monotonic() > self.deadline[0]:
                raise JobFailed(f"transfer {job.transfer} is {record['state']}, not COMPLETED:"
                                f" {record.get('reason')}")
            await asyncio.sleep(RETRY_PAUSE_S)

    async def run(self, job: Job, work: Path) -> None:
        """The whole job; a copy that verified and completed is deleted (a soak makes
        thousands), one that did not stays for the post-mortem."""
        copy = work / f"job-{job.number}.jsonl"
        try:
            await self.negotiate(job)
            await self.open_transfer(job)
            await self.pull(job, copy)
            await self.complete(job)
            copy.unlink()
        except (JobFailed, PeerError) as exc:
            job.problem = str(exc)


def whole_records(part: Path) -> tuple[int, str]:
    """Cut a partial last record off ``part`` (a resume fetches it whole); return the count
    of whole records and their SHA-256."""
    data = part.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with part.open("r+b") as f:
            f.truncate(end)
    return data.count(b"\n", 0, end), hashlib.sha256(data[:end]).hexdigest()
