"""Crash consistency: two real daemons under load, killed with SIGKILL and restarted.

A provider and a consumer (``connector run`` processes, HTTPS on loopback, SQLite files in
their folders) are driven through the consumer's management API the way ``connector
negotiate`` and ``connector transfer`` drive it, by several jobs at once. Meanwhile a killer,
following a schedule drawn from the seed, SIGKILLs one daemon or both at random moments and
restarts it in the same folder on the same ports. After the work stops and the outboxes have
drained, both databases are compared.

**Acknowledged**, and what is expected of it:

- A *negotiation* is acknowledged when ``POST /api/negotiations`` answered 201 with its id
  (the consumer has persisted it REQUESTED with its ContractRequestMessage in its outbox).
  The consumer is a member, so the provider's policy grants it: it must end FINALIZED on both
  sides, the provider holding exactly one negotiation for its consumerPid, both naming the
  same providerPid and the same agreement id, and each side holding that agreement once.
- A *transfer* is acknowledged when ``POST /api/transfers`` answered 201 with its id. Once
  STARTED, the job pulls the records through ``/api/transfers/{id}/data``; a pull cut by a
  kill (of either daemon) is resumed as ``connector transfer`` resumes it: a partial last
  record is dropped and the pull asked again from ``?offset=`` the count of whole records.
  The copy must equal the provider's summary (records, bytes, SHA-256) and the source file
  byte for byte; the job then completes it, and it must end COMPLETED on both sides, the
  provider holding exactly one transfer for its consumerPid.
- A call that failed (the daemon died under it, or answered 5xx) acknowledged nothing; the
  job opens another process. Whatever the consumer nevertheless persisted must still agree
  with the provider: a negotiation ends in the same state on both sides, a transfer is in the
  same state on both sides, never duplicated.

**Crash points by construction.** A random kill rarely lands in the few milliseconds between
a message's delivery and the deletion of its outbox row (the outbox delivers at least once:
rows are deleted in batches after delivery). So the harness also puts the daemon's database in
the state such a kill leaves: it watches both outboxes, and after each SIGKILL it writes back,
under their own sequence numbers, a few rows that had been delivered (one of each kind of
message, chosen by the seed) before restarting the daemon, which then delivers them again.

Both databases then pass ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``, after
every kill and at the end. Every random choice comes from ``random.Random`` seeded with the
run's seed (printed at the start and in every failure), so ``CRASH_SEED=N`` replays the same
kill schedule and the same jobs (the interleaving with the daemons' own timing may differ).

``python -m tests.e2e.crash_harness --seconds 300`` is the long form (``make soak-crash``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from connector.client import Management
from connector.config import Settings, load_settings
from connector.core.errors import PeerError
from connector.demo import Participant, create_space, start, stop

# What the jobs pull: dataset id -> (file under data/, records written for it, weight of the
# choice). The ten example records come with every participant folder. A kill cuts a pull only
# if the records still to come exceed what the kernel's socket buffers hold (a few MB on
# loopback), hence the long one (~10 MB, pulled in ~2.5 s, see READ_PAUSE_S).
DATASETS = {
    "example-weather": ("example.jsonl", 0, 1),
    "crash-series": ("series.jsonl", 40_000, 2),
    "crash-long": ("long.jsonl", 200_000, 1),
}
# The job reads its pull slowly (this pause per READ_CHUNK bytes: ~4 MB/s) through a small
# receive window, so that a long pull is still under way when a kill lands.
READ_CHUNK = 16 * 1024
READ_PAUSE_S = 0.004
RECEIVE_WINDOW = 32 * 1024
# A restart whose port another program took meanwhile is tried this often, a second apart.
RESTART_ATTEMPTS = 10
# A call to a daemon that is down (being restarted) is tried again after this pause.
RETRY_PAUSE_S = 0.2
# Negotiation states that are not the end of the road (the peer still has to answer).
NEGOTIATION_TERMINAL = ("FINALIZED", "TERMINATED")
TRANSFER_TRANSIENT = ("REQUESTED",)
LOG_MARKERS = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")


@dataclass(frozen=True)
class Plan:
    """What one run does. ``kills`` bounds the short form; ``seconds`` the long one."""

    seed: int
    concurrency: int = 5
    min_jobs: int = 20  # jobs started at least (short form)
    kills: int | None = 3  # stop after this many kill cycles (None: until ``seconds``)
    seconds: float | None = None  # start jobs and kill for this long (long form)
    kill_gap_s: tuple[float, float] = (1.0, 3.0)  # between a restart and the next kill
    down_s: tuple[float, float] = (0.1, 1.2)  # how long a killed daemon stays down
    drain_s: float = 90.0  # jobs and outboxes must settle within this after the work stops


@dataclass
class Kill:
    at: float  # seconds since the work started
    victims: tuple[str, ...]
    down: float
    redelivered: list[str] = field(default_factory=list)  # "daemon kind process" per row


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


@dataclass
class Report:
    seed: int
    root: Path
    kills: list[Kill] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)  # 500s from a management API
    work_s: float = 0.0
    settle_s: float = 0.0

    def figures(self) -> dict[str, Any]:
        jobs = self.jobs
        return {
            "seed": self.seed, "kills": len(self.kills),
            "provider_kills": sum("provider" in k.victims for k in self.kills),
            "consumer_kills": sum("consumer" in k.victims for k in self.kills),
            "jobs": len(jobs),
            "negotiations_acknowledged": sum(j.negotiation is not None for j in jobs),
            "transfers_acknowledged": sum(j.transfer is not None for j in jobs),
            "copies_verified": sum(j.verified for j in jobs),
            "calls_unacknowledged": sum(j.failed_calls for j in jobs),
            "pulls_resumed": sum(j.resumes for j in jobs),
            "rows_redelivered": sum(len(k.redelivered) for k in self.kills),
            "work_s": round(self.work_s, 1), "settle_s": round(self.settle_s, 1),
            "mismatches": len(self.mismatches), "server_errors": len(self.server_errors),
        }

    def explain(self) -> str:
        """Everything a failure message needs to be replayed and understood."""
        lines = [f"CRASH_SEED={self.seed} (replay: CRASH_SEED={self.seed} pytest ...)",
                 f"figures: {json.dumps(self.figures())}",
                 "kills: " + ", ".join(f"{k.at:.1f}s {'+'.join(k.victims)} down {k.down:.1f}s"
                                       for k in self.kills)]
        lines += [f"  kill {i + 1} re-delivers {row}" for i, k in enumerate(self.kills)
                  for row in k.redelivered]
        lines += [
                 f"folders and daemon logs: {self.root}"]
        lines += [f"MISMATCH {m}" for m in self.mismatches]
        lines += [f"500 {e}" for e in self.server_errors]
        lines += ["log: " + line for line in log_excerpt(self.root)]
        return "\n".join(lines)


class Unreachable(Exception):
    """A daemon stayed down past the deadline."""


# -- the two daemons -------------------------------------------------------------------------


def make_space(root: Path) -> tuple[Participant, Participant]:
    """Provider and consumer folders; the provider offers longer series besides the example.

    The records are written first: the ports are picked last, just before the daemons start,
    so that little else on the machine can take them in between."""
    records = root / "records"
    records.mkdir()
    for name, count, _ in DATASETS.values():
        if count:
            with (records / name).open("w") as f:
                for i in range(count):
                    f.write(json.dumps({"seq": i, "station": f"s-{i % 31}",
                                        "reading": round((i * 7919 % 1000) / 10, 1)}) + "\n")
    provider, consumer = create_space(root)
    (consumer.dir / "datasets" / "example.toml").unlink()  # the consumer offers nothing
    for dataset, (name, count, _) in DATASETS.items():
        if count:
            (records / name).rename(provider.dir / "data" / name)
            (provider.dir / "datasets" / f"{dataset}.toml").write_text(
                f'id = "{dataset}"\ntitle = "{dataset}"\ndescription = "{count} readings"\n'
                'keywords = ["series"]\npolicies = ["members-only"]\n'
                f'[source]\ntype = "jsonl"\npath = "data/{name}"\n')
    return provider, consumer


def source_of(provider: Participant, dataset: str) -> Path:
    return provider.dir / "data" / DATASETS[dataset][0]


def database(participant: Participant) -> Path:
    return load_settings(participant.dir).database


def integrity(participant: Participant) -> list[str]:
    """What ``PRAGMA integrity_check`` and ``foreign_key_check`` find wrong (empty: sound)."""
    conn = sqlite3.connect(database(participant))
    try:
        found = [str(r[0]) for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        found += [f"foreign key: {r}" for r in conn.execute("PRAGMA foreign_key_check")]
        return found
    finally:
        conn.close()


def outbox_depth(participant: Participant) -> int:
    conn = sqlite3.connect(f"file:{database(participant)}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


OutboxRow = tuple[int, str, str, str, bytes]  # seq, process_id, url, audience, body


def outbox_rows(participant: Participant) -> dict[int, OutboxRow]:
    conn = sqlite3.connect(f"file:{database(participant)}?mode=ro", uri=True, timeout=5)
    try:
        return {r[0]: r for r in conn.execute(
            "SELECT seq, process_id, url, audience, body FROM outbox")}
    finally:
        conn.close()


def message_kind(url: str) -> str:
    """``negotiations/request``, ``negotiations/agreement/verification``, ``transfers/start``..."""
    area, _, rest = url.partition("/dsp/")[2].partition("/")[2].partition("/")
    if rest == "request":
        return f"{area}/request"
    return area + "/" + rest.partition("/")[2]


class OutboxTap:
    """Remembers every outbox row it saw, to tell which ones were delivered since."""

    def __init__(self, participant: Participant) -> None:
        self.participant = participant
        self.seen: dict[int, OutboxRow] = {}

    def poll(self) -> None:
        if self.participant.process is not None:
            self.seen.update(outbox_rows(self.participant))

    def redeliver(self, rng: random.Random) -> list[OutboxRow]:
        """With the daemon dead: write back one delivered row of each kind (the state a
        kill between delivery and deletion leaves); forget the rest (seqs get reused)."""
        present = outbox_rows(self.participant)
        by_kind: dict[str, list[OutboxRow]] = defaultdict(list)
        for seq in sorted(self.seen):
            if seq not in present:
                by_kind[message_kind(self.seen[seq][2])].append(self.seen[seq])
        chosen = sorted(rng.choice(rows) for _, rows in sorted(by_kind.items()))
        conn = sqlite3.connect(database(self.participant))
        try:
            with conn:
                conn.executemany("INSERT INTO outbox (seq, process_id, url, audience, body,"
                                 " next_attempt) VALUES (?, ?, ?, ?, ?, 0)", chosen)
        finally:
            conn.close()
        self.seen.clear()
        return chosen


def sigkill(participant: Participant) -> None:
    proc = participant.process
    assert proc is not None, f"{participant.name} is not running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    participant.process = None


def restart(participant: Participant, generation: int) -> None:
    """Start again in the same folder (same ports), keeping the previous run's log.

    While the daemon was down, another program on the machine may have been given one of its
    ports for an outgoing connection: then wait for the port a few times."""
    for attempt in range(RESTART_ATTEMPTS):
        log = participant.dir / "state" / "daemon.log"
        if log.exists():
            log.rename(log.with_name(f"daemon.{generation}.{attempt}.log"))
        try:
            start(participant)
            return
        except RuntimeError:
            if "address already in use" not in log.read_text(errors="replace"):
                raise
            time.sleep(1.0)
    raise RuntimeError(f"{participant.name}: its ports stayed taken; see {log.parent}")


def log_excerpt(root: Path, limit: int = 60) -> list[str]:
    """Warnings, errors and tracebacks of every daemon run under ``root``, oldest first."""
    found = []
    for log in sorted(root.glob("*/state/daemon*.log"), key=lambda p: p.stat().st_mtime):
        for line in log.read_text(errors="replace").splitlines():
            if any(marker in line for marker in LOG_MARKERS):
                found.append(f"{log.parent.parent.name}/{log.name}: {line[:300]}")
    return found[:limit]


# -- the jobs ---------------------------------------------------------------------------------


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
                 report: Report, deadline: list[float]) -> None:
        self.api = consumer
        self.reader = reader
        self.provider = provider
        self.report = report
        self.deadline = deadline  # [when every call gives up]; moved when the work stops

    def _note(self, exc: PeerError, method: str, path: str) -> None:
        if exc.peer_status == 500:
            self.report.server_errors.append(f"{method} {path}: {exc.message[:300]}")

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
                    raise Unreachable(f"{method} {path}: {exc.message}") from exc
            except (OSError, TimeoutError) as exc:
                if time.monotonic() > self.deadline[0]:
                    raise Unreachable(f"{method} {path}: {exc}") from exc
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
                raise Unreachable(f"POST {path} never acknowledged")
            await asyncio.sleep(RETRY_PAUSE_S)

    async def negotiate(self, job: Job) -> None:
        job.negotiation = await self.create(job, "/api/negotiations", {
            "provider": self.provider.url, "datasetId": job.dataset})
        record = await self.call("GET", f"/api/negotiations/{job.negotiation}")
        while record["state"] not in NEGOTIATION_TERMINAL:
            if time.monotonic() > self.deadline[0]:
                raise Unreachable(f"negotiation {job.negotiation} still {record['state']}")
            record = await self.call("GET", f"/api/negotiations/{job.negotiation}?wait=2")
        if record["state"] != "FINALIZED":
            raise Unreachable(f"negotiation {job.negotiation} ended {record['state']}: "
                              f"{record.get('reason')}")
        job.agreement = str(record["agreementId"])

    async def open_transfer(self, job: Job) -> None:
        job.transfer = await self.create(job, "/api/transfers", {"agreementId": job.agreement})
        record = await self.call("GET", f"/api/transfers/{job.transfer}")
        while record["state"] in TRANSFER_TRANSIENT:
            if time.monotonic() > self.deadline[0]:
                raise Unreachable(f"transfer {job.transfer} still {record['state']}")
            await asyncio.sleep(RETRY_PAUSE_S)
            record = await self.call("GET", f"/api/transfers/{job.transfer}")
        if record["state"] != "STARTED":
            raise Unreachable(f"transfer {job.transfer} is {record['state']}: "
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
                    raise Unreachable(f"pull of {job.transfer} never finished") from exc
                await asyncio.sleep(RETRY_PAUSE_S)
        records, sha256 = whole_records(part)
        got = {"records": records, "bytes": part.stat().st_size, "sha256": sha256}
        if got != summary:
            raise Unreachable(f"copy of {job.transfer} {got} != provider's summary {summary}")
        if part.read_bytes() != source_of(self.provider, job.dataset).read_bytes():
            raise Unreachable(f"copy of {job.transfer} differs from the provider's source")
        job.verified = True

    async def complete(self, job: Job) -> None:
        path = f"/api/transfers/{job.transfer}"
        while True:
            with contextlib.suppress(PeerError):  # a 400: the call before did complete it
                await self.call("POST", f"{path}/complete")
            if (await self.call("GET", path))["state"] == "COMPLETED":
                job.completed = True
                return
            await asyncio.sleep(RETRY_PAUSE_S)

    async def run(self, job: Job, work: Path) -> None:
        try:
            await self.negotiate(job)
            await self.open_transfer(job)
            await self.pull(job, work / f"job-{job.number}.jsonl")
            await self.complete(job)
        except (Unreachable, PeerError) as exc:
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


# -- the checks -------------------------------------------------------------------------------


def _by(rows: Iterable[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[str(row[key])].append(row)
    return grouped


def _brief(row: dict[str, Any]) -> str:
    return (f"{row['id']} {row['state']} cpid={row['consumerPid']} ppid={row['providerPid']}"
            f" reason={row.get('reason')!r}")


@dataclass
class Side:
    """What one daemon holds, read through its management API."""

    negotiations: list[dict[str, Any]]
    agreements: list[dict[str, Any]]
    transfers: list[dict[str, Any]]


def negotiation_mismatches(consumer: Side, provider: Side, jobs: list[Job]) -> list[str]:
    found = []
    theirs = _by((n for n in provider.negotiations if n["role"] == "provider"), "consumerPid")
    for cpid, rows in theirs.items():
        if len(rows) > 1:
            found.append(f"{len(rows)} provider negotiations for consumerPid {cpid}: "
                         + "; ".join(_brief(r) for r in rows))
    mine = {n["id"]: n for n in consumer.negotiations if n["role"] == "consumer"}
    for job in jobs:
        if job.negotiation is not None and job.negotiation not in mine:
            found.append(f"acknowledged negotiation {job.negotiation} is gone from the consumer")
        elif job.negotiation is not None and mine[job.negotiation]["state"] != "FINALIZED":
            found.append(f"acknowledged negotiation not FINALIZED: "
                         f"{_brief(mine[job.negotiation])}")
    for pid, ours in mine.items():
        rows = theirs.get(pid, [])
        if not rows:
            if ours["state"] != "TERMINATED":  # a request that never arrived may be given up
                found.append(f"consumer negotiation unknown to the provider: {_brief(ours)}")
            continue
        other = rows[-1]
        if (ours["state"], ours["providerPid"], ours["agreementId"]) != (
                other["state"], other["id"], other["agreementId"]):
            found.append(f"negotiation differs: consumer {_brief(ours)} "
                         f"agreement={ours['agreementId']} / provider {_brief(other)} "
                         f"agreement={other['agreementId']}")
    found += agreement_mismatches("consumer", consumer)
    found += agreement_mismatches("provider", provider)
    return found


def agreement_mismatches(name: str, side: Side) -> list[str]:
    found = []
    for nid, rows in _by(side.agreements, "negotiationId").items():
        if len(rows) > 1:
            found.append(f"{name}: {len(rows)} agreements for negotiation {nid}: "
                         + ", ".join(r["id"] for r in rows))
    held = {a["id"] for a in side.agreements}
    for n in side.negotiations:
        if n["state"] == "FINALIZED" and n["agreementId"] not in held:
            found.append(f"{name}: FINALIZED negotiation without its agreement: {_brief(n)}")
    return found


def transfer_mismatches(consumer: Side, provider: Side, jobs: list[Job]) -> list[str]:
    found = []
    theirs = _by((t for t in provider.transfers if t["role"] == "provider"), "consumerPid")
    for cpid, rows in theirs.items():
        if len(rows) > 1:
            found.append(f"{len(rows)} provider transfers for consumerPid {cpid}: "
                         + "; ".join(_brief(r) for r in rows))
    mine = {t["id"]: t for t in consumer.transfers if t["role"] == "consumer"}
    for job in jobs:
        if job.transfer is None:
            continue
        ours = mine.get(job.transfer)
        if ours is None:
            found.append(f"acknowledged transfer {job.transfer} is gone from the consumer")
        elif ours["state"] != "COMPLETED" or not job.verified:
            found.append(f"acknowledged transfer not COMPLETED with a verified copy "
                         f"(verified={job.verified}): {_brief(ours)}")
    for pid, ours in mine.items():
        rows = theirs.get(pid, [])
        if not rows:
            if ours["state"] != "TERMINATED":
                found.append(f"consumer transfer unknown to the provider: {_brief(ours)}")
            continue
        other = rows[-1]
        if (ours["state"], ours["providerPid"], ours["agreementId"]) != (
                other["state"], other["id"], other["agreementId"]):
            found.append(f"transfer differs: consumer {_brief(ours)} / provider {_brief(other)}")
    return found


async def read_side(driver: Driver, api: Management) -> Side:
    return Side(negotiations=await driver.call("GET", "/api/negotiations", api=api),
                agreements=await driver.call("GET", "/api/agreements", api=api),
                transfers=await driver.call("GET", "/api/transfers", api=api))


def settled(side: Side) -> bool:
    """No process waits for an answer from the peer."""
    return (all(n["state"] in NEGOTIATION_TERMINAL or n["state"] == "OFFERED"
                for n in side.negotiations)
            and all(t["state"] not in TRANSFER_TRANSIENT for t in side.transfers))


# -- one run ----------------------------------------------------------------------------------


class CrashRun:
    def __init__(self, plan: Plan, root: Path) -> None:
        self.plan = plan
        # Kills and jobs draw from two generators, so that one's timing never shifts the other.
        self.kill_rng = random.Random(f"{plan.seed}/kills")
        self.rng = random.Random(f"{plan.seed}/jobs")
        self.report = Report(seed=plan.seed, root=root)
        self.provider, self.consumer = make_space(root)
        self.parts = {"provider": self.provider, "consumer": self.consumer}
        self.taps = {name: OutboxTap(part) for name, part in self.parts.items()}
        # The first two kills take each daemon once; then any, or both together.
        self.first_victims = self.kill_rng.sample(list(self.parts), 2)
        self.generation = 0
        self.t0 = 0.0
        self.stopping = asyncio.Event()

    def _schedule(self) -> Kill:
        rng = self.kill_rng
        victims = rng.choices([("provider",), ("consumer",), ("provider", "consumer")],
                              weights=[4, 4, 1])[0]
        if self.first_victims:
            victims = (self.first_victims.pop(0),)
        return Kill(at=rng.uniform(*self.plan.kill_gap_s), victims=victims,
                    down=rng.uniform(*self.plan.down_s))

    def _kills_left(self) -> bool:
        plan, done = self.plan, len(self.report.kills)
        if plan.seconds is not None:
            return time.monotonic() - self.t0 < plan.seconds
        return plan.kills is None or done < plan.kills

    async def killer(self) -> None:
        while self._kills_left():
            kill = self._schedule()
            await asyncio.sleep(kill.at)
            kill.at = time.monotonic() - self.t0
            for name in kill.victims:
                sigkill(self.parts[name])
                broken = integrity(self.parts[name])
                if broken:
                    self.report.mismatches.append(f"{name} database after SIGKILL: {broken}")
                for row in self.taps[name].redeliver(self.kill_rng):
                    kill.redelivered.append(f"{name} {message_kind(row[2])} {row[1]}")
            self.report.kills.append(kill)
            await asyncio.sleep(kill.down)
            self.generation += 1
            for name in kill.victims:
                await asyncio.to_thread(restart, self.parts[name], self.generation)
        self.stopping.set()

    async def tap(self) -> None:
        """Watch both outboxes (see OutboxTap) until the work stops."""
        while not self.stopping.is_set():
            for tap in self.taps.values():
                await asyncio.to_thread(tap.poll)
            await asyncio.sleep(0.01)

    def _work_left(self, started: int) -> bool:
        plan = self.plan
        if plan.seconds is not None:
            return time.monotonic() - self.t0 < plan.seconds
        return not self.stopping.is_set() or started < plan.min_jobs

    async def workload(self, driver: Driver, work: Path) -> None:
        running: set[asyncio.Task[None]] = set()
        while self._work_left(len(self.report.jobs)):
            while len(running) >= self.plan.concurrency:
                _, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            number = len(self.report.jobs)
            dataset = self.rng.choices(list(DATASETS), [w for _, _, w in DATASETS.values()])[0]
            job = Job(number=number, dataset=dataset)
            self.report.jobs.append(job)
            running.add(asyncio.create_task(driver.run(job, work)))
            await asyncio.sleep(self.rng.uniform(0.0, 0.2))
        if running:
            await asyncio.wait(running)

    async def settle(self, driver: Driver, provider_api: Management) -> tuple[Side, Side]:
        """Wait until both outboxes are empty and no process waits for its peer."""
        t0 = time.monotonic()
        while True:
            consumer = await read_side(driver, driver.api)
            provider = await read_side(driver, provider_api)
            quiet = (outbox_depth(self.consumer) == 0 and outbox_depth(self.provider) == 0
                     and settled(consumer) and settled(provider))
            if quiet or time.monotonic() > driver.deadline[0]:
                self.report.settle_s = time.monotonic() - t0
                if not quiet:
                    self.report.mismatches.append(
                        f"not settled after {self.report.settle_s:.0f}s: outboxes "
                        f"{outbox_depth(self.consumer)}/{outbox_depth(self.provider)}")
                return consumer, provider
            await asyncio.sleep(0.5)

    async def run(self) -> Report:
        report = self.report
        print(f"CRASH_SEED={self.plan.seed} folders in {report.root}", flush=True)
        start(self.provider)
        start(self.consumer)
        consumer_api = Management(load_settings(self.consumer.dir))
        provider_api = Management(load_settings(self.provider.dir))
        reader = SlowReader(load_settings(self.consumer.dir))
        horizon = (self.plan.seconds or 600.0) + 600.0  # moved to drain_s once work stops
        driver = Driver(consumer_api, reader, self.provider, report,
                        [time.monotonic() + horizon])
        work = report.root / "copies"
        work.mkdir()
        try:
            self.t0 = time.monotonic()
            killer = asyncio.create_task(self.killer())
            tap = asyncio.create_task(self.tap())
            await self.workload(driver, work)
            await killer
            await tap
            report.work_s = time.monotonic() - self.t0
            driver.deadline[0] = time.monotonic() + self.plan.drain_s
            consumer, provider = await self.settle(driver, provider_api)
            report.mismatches += [f"job {j.number}: {j.problem}" for j in report.jobs
                                  if j.problem]
            report.mismatches += negotiation_mismatches(consumer, provider, report.jobs)
            report.mismatches += transfer_mismatches(consumer, provider, report.jobs)
        finally:
            await consumer_api.close()
            await provider_api.close()
            await reader.close()
            stop(self.consumer)
            stop(self.provider)
        for name, part in self.parts.items():
            broken = integrity(part)
            if broken:
                report.mismatches.append(f"{name} database at the end: {broken}")
        return report


def seed_from_env() -> int:
    """``CRASH_SEED`` if set (a replay), else a fresh one."""
    given = os.environ.get("CRASH_SEED")
    return int(given) if given else random.SystemRandom().randrange(1, 2**31)


def main(argv: list[str] | None = None) -> int:
    """The long form: jobs and kills for ``--seconds``, then the same checks; prints the
    figures as one JSON line and every mismatch; exits 1 if there is any."""
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.crash_harness")
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("CRASH_SOAK_S", "300")))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the folders afterwards")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else seed_from_env()
    plan = Plan(seed=seed, concurrency=args.concurrency, kills=None, seconds=args.seconds,
                kill_gap_s=(2.0, 8.0), down_s=(0.1, 2.0), drain_s=180.0)
    root = Path(tempfile.mkdtemp(prefix="connector-crash-"))
    report = asyncio.run(CrashRun(plan, root).run())
    print(json.dumps({"name": "crash_soak", **report.figures()}))
    if report.mismatches or report.server_errors:
        print(report.explain(), file=sys.stderr)
        return 1
    counts = Counter(k.victims for k in report.kills)
    print(f"crash soak ok: seed {seed}, kills {dict(counts)}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
