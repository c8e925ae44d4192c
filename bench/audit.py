"""What the audit trail costs: negotiations per second with it on and off, in the same run.

Two pairs of connector daemons (provider and consumer, created and started as ``make demo``
does) run side by side: one with the default ``[audit]`` (on), one with ``enabled = false``.
The driver alternates timed phases between them (on, off, five times each) at concurrency
64, so that both see the same load from the rest of the box; each rate is completed
negotiations over the time of its phases, and the CPU both daemons used per negotiation is
reported too (what the rest of the box's load cannot sway). Then one pull of a large
dataset from the audited provider shows how many audit entries a stream adds (a bounded
number, not one per record).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from tests.harness import Participant, create_space, start, stop

from bench import CpuMeter, LoadResult, emit, load, log
from connector.adapters.storage import audit_file
from connector.client import Management
from connector.config import load_settings
from connector.core.audit import verify_chain

DATASET = "example-weather"
CONCURRENCY = 64
ROUNDS = 5  # on, off, on, off, ...
MAX_PER_PHASE = 100_000
# The pulled dataset: 1 GiB of JSON lines (64 MiB with --quick), written once per run.
PULL_BYTES, QUICK_PULL_BYTES = 1 << 30, 64 << 20


def _space(root: Path, audit: bool) -> tuple[Participant, Participant]:
    provider, consumer = create_space(root)
    if not audit:
        for p in (provider, consumer):
            with (p.dir / "connector.toml").open("a") as f:
                f.write("\n[audit]\nenabled = false\n")
    return provider, consumer


async def _phase(provider: Participant, consumer: Participant, session: aiohttp.ClientSession,
                 duration_s: float) -> LoadResult:
    settings = load_settings(consumer.dir)
    url = settings.management_url + "/api/negotiations?wait=30"
    headers = {"Authorization": f"Bearer {settings.management_token()}",
               "Content-Type": "application/json"}
    body = msgspec.json.encode({"provider": provider.url, "datasetId": DATASET})

    async def call() -> bool:
        async with session.post(url, data=body, headers=headers) as resp:
            doc: dict[str, Any] = msgspec.json.decode(await resp.read())
            return resp.status == 201 and doc.get("state") == "FINALIZED"

    return await load(call, concurrency=CONCURRENCY, duration_s=duration_s,
                      max_count=MAX_PER_PHASE)


@dataclass
class Totals:
    """One pair's timed phases, summed."""

    completed: int = 0
    seconds: float = 0.0
    errors: int = 0
    cpu_s: float = 0.0  # provider + consumer CPU
    rates: list[float] = field(default_factory=list)

    def add(self, r: LoadResult, cpu: CpuMeter) -> None:
        self.completed += r.completed
        self.seconds += r.elapsed_s
        self.errors += r.errors
        self.cpu_s += sum(cpu.cpu_s.values())
        self.rates.append(r.rate)


async def _compare(spaces: dict[str, tuple[Participant, Participant]], duration_s: float,
                   warmup_s: float) -> dict[str, Totals]:
    totals = {label: Totals() for label in spaces}
    connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        for provider, consumer in spaces.values():
            await _phase(provider, consumer, session, warmup_s)
        for _ in range(ROUNDS):
            for label, (provider, consumer) in spaces.items():
                pids = {p.name: p.process.pid for p in (provider, consumer) if p.process}
                with CpuMeter(pids) as cpu:
                    r = await _phase(provider, consumer, session, duration_s / ROUNDS)
                totals[label].add(r, cpu)
                log(f"audit {label}: {r.completed} negotiations, {r.rate:.1f}/s, other "
                    f"processes on the box: {cpu.foreign_cores:.2f} cores")
    return totals


def _entries(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM audit_entries").fetchone()[0])


async def _settled(db: Path, quiet_s: float = 1.0, deadline_s: float = 15.0) -> int:
    """The entry count once it has not changed for ``quiet_s`` (the provider writes the
    stream's last entry after the consumer has read its last byte)."""
    count, since = _entries(db), time.monotonic()
    end = since + deadline_s
    while time.monotonic() < end and time.monotonic() - since < quiet_s:
        await asyncio.sleep(0.1)
        now = _entries(db)
        if now != count:
            count, since = now, time.monotonic()
    return count


def _verify(provider: Participant) -> tuple[int, float]:
    """Verify the provider's trail as ``connector audit verify`` does: (entries, seconds)."""
    settings = load_settings(provider.dir)
    document = json.loads((provider.dir / "did.json").read_text())
    t0 = time.perf_counter()
    report = verify_chain(audit_file.iter_chain(settings.database),
                          audit_file.read_checkpoints(settings.database), did=settings.did,
                          document=document)
    elapsed = time.perf_counter() - t0
    if not report.ok:
        raise RuntimeError(f"the provider's trail does not verify: {report.problem}")
    return report.entries, elapsed


def _big_dataset(provider: Participant, size: int) -> int:
    """A dataset of ``size`` bytes of JSON lines on the provider; returns its records."""
    line = b'{"seq": %d, "station": "s-%d", "payload": "' + b"x" * 200 + b'"}\n'
    records = 0
    with (provider.dir / "data" / "big.jsonl").open("wb") as f:
        written = 0
        while written < size:
            chunk = b"".join(line % (records + i, i % 97) for i in range(10_000))
            f.write(chunk)
            written += len(chunk)
            records += 10_000
    (provider.dir / "datasets" / "big.toml").write_text(
        'id = "big"\ntitle = "Big"\ndescription = "many records"\nkeywords = ["big"]\n'
        'policies = ["members-only"]\n[source]\ntype = "jsonl"\npath = "data/big.jsonl"\n')
    return records


async def _pull(provider: Participant, consumer: Participant, out: Path) -> tuple[int, int]:
    """Negotiate and start a transfer of the big dataset, then pull it whole; returns the
    records pulled and the audit entries the provider wrote during the pull alone."""
    api = Management(load_settings(consumer.dir))
    db = load_settings(provider.dir).database
    try:
        record = await api.call("POST", "/api/negotiations?wait=30",
                                {"provider": provider.url, "datasetId": "big"})
        transfer = await api.call("POST", "/api/transfers?wait=30",
                                  {"agreementId": record["agreementId"]})
        before = _entries(db)
        records, _ = await api.download(f"/api/transfers/{transfer['id']}/data", out)
        return int(records), await _settled(db) - before
    finally:
        await api.close()


def run(*, quick: bool) -> None:
    duration_s = 5.0 if quick else 30.0  # per pair, over its ROUNDS phases
    warmup_s = 0.5 if quick else 1.0
    root = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    running: list[Participant] = []
    try:
        spaces = {"on": _space(root / "on", True), "off": _space(root / "off", False)}
        records = _big_dataset(spaces["on"][0], QUICK_PULL_BYTES if quick else PULL_BYTES)
        for pair in spaces.values():
            for p in pair:
                start(p)
                running.append(p)
        totals = asyncio.run(_compare(spaces, duration_s, warmup_s))
        provider, consumer = spaces["on"]
        pulled, added = asyncio.run(_pull(provider, consumer, root / "pulled.jsonl"))
        verified, verify_s = _verify(provider)
    finally:
        for p in running:
            stop(p)
        shutil.rmtree(root, ignore_errors=True)
    on, off = totals["on"], totals["off"]
    rate = {k: t.completed / t.seconds if t.seconds else 0.0 for k, t in totals.items()}
    emit("negotiations_per_s_audit_off_c64", rate["off"], "negotiations/s")
    # The target: the audit trail keeps at least 90% of the rate without it.
    emit("negotiations_per_s_audit_on_c64", rate["on"], "negotiations/s", limit=rate["off"])
    # The same, round by round (each "on" phase against the "off" phase right after it): the
    # median is less swayed by a burst of other work on a shared box than the sums above.
    ratios = sorted(a / b for a, b in zip(on.rates, off.rates, strict=True) if b)
    emit("negotiations_per_s_audit_ratio_median_c64", ratios[len(ratios) // 2], "ratio")
    # What the box's load cannot sway: CPU (provider + consumer) per negotiation.
    cpu = {k: t.cpu_s / t.completed * 1e6 if t.completed else 0.0 for k, t in totals.items()}
    emit("negotiation_cpu_us_audit_off", cpu["off"], "us/negotiation")
    emit("negotiation_cpu_us_audit_on", cpu["on"], "us/negotiation", limit=cpu["off"])
    emit("negotiation_errors_audit", on.errors + off.errors, "count")
    if pulled != records:
        raise RuntimeError(f"pulled {pulled} of {records} records")
    emit("audit_pull_records", pulled, "records")
    # The entries the provider wrote while it streamed them all: a bounded number.
    emit("audit_entries_per_pull", added, "entries")
    # `connector audit verify`'s walk (digests, links, checkpoint signatures) of the
    # provider's whole trail, after every phase above.
    emit("audit_verify_entries", verified, "entries")
    emit("audit_verify_entries_per_s", verified / verify_s if verify_s else 0.0, "entries/s")
