"""Two variants of a connector pair compared in the same run (``metrics``, ``audit``).

Each variant is a provider and a consumer created and started as ``make demo`` does, with
some lines appended to both ``connector.toml`` files. The driver runs timed phases at c=64
through the consumer's management API (``POST /api/negotiations?wait=30``, as
``bench/negotiation.py`` drives it), alternating the variants in ABBA order over the rounds
(A B, B A, A B, ...), so that the growth of the stored negotiations and the load of other
processes on a shared box fall on both alike.

What is reported, per variant: the median phase rate; the median over the rounds of the
ratio of the two variants' rates in the same round (the figure a burst of other work sways
least); and the CPU each daemon used per negotiation (``/proc/<pid>/stat``), median over the
phases, which the load of other processes disturbs far less than the rate.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from tests.harness import Participant, create_space, start, stop

from bench import CpuMeter, LoadResult, emit, load, log, own_metrics
from connector.config import load_settings

DATASET = "example-weather"
CONCURRENCY = 64
# Before each timed phase of a comparison, this long unmetered at the same concurrency.
REWARM_S = 0.5
MAX_PER_PHASE = 100_000
PROCESSES = ("provider", "consumer")
# Something to run beside a phase (a scraper): called with the phase's duration.
During = Callable[[aiohttp.ClientSession, float], Awaitable[object]]


@dataclass
class Variant:
    provider: Participant
    consumer: Participant
    during: During | None = None
    more: dict[str, int] = field(default_factory=dict)  # other processes metered: name -> pid
    # CPU seconds so far of a server's processes the variant uses, metered as ``server``
    server_cpu: Callable[[], float] | None = None
    server: str = "postgres"
    results: list[LoadResult] = field(default_factory=list)
    cpu_us: list[dict[str, float]] = field(default_factory=list)  # per phase and process

    def rate(self) -> float:
        """Completed negotiations over the time of all its phases."""
        return (sum(r.completed for r in self.results)
                / sum(r.elapsed_s for r in self.results))

    def median_idle_cores(self) -> float:
        """The host's cores left idle during its phases (median)."""
        return statistics.median(r.idle_cores for r in self.results)

    def median_rate(self) -> float:
        return statistics.median(r.rate for r in self.results)

    def median_cpu_us(self, process: str | None = None) -> float:
        """Median CPU µs per negotiation of one daemon, or of both (``None``)."""
        return statistics.median(sum(c.values()) if process is None else c[process]
                                 for c in self.cpu_us)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.results)


def make_pair(root: Path, toml: str) -> tuple[Participant, Participant]:
    """A provider and a consumer pinning each other, ``toml`` appended to both settings;
    each with its own metrics listener unless ``toml`` says otherwise (``own_metrics``)."""
    provider, consumer = create_space(root)
    if toml:
        for p in (provider, consumer):
            with (p.dir / "connector.toml").open("a") as f:
                f.write("\n" + toml + "\n")
    if "[metrics]" not in toml:
        own_metrics(provider.dir, consumer.dir)
    return provider, consumer


@contextmanager
def running(*variants: Variant) -> Iterator[None]:
    """Every variant's provider and consumer started; all stopped on the way out."""
    started: list[Participant] = []
    try:
        for v in variants:
            for p in (v.provider, v.consumer):
                start(p)
                started.append(p)
        yield
    finally:
        for p in reversed(started):
            stop(p)


async def phase(session: aiohttp.ClientSession, v: Variant, duration_s: float, *,
                concurrency: int = CONCURRENCY, count: int = MAX_PER_PHASE
                ) -> tuple[LoadResult, dict[str, float]]:
    """One phase (``duration_s`` or ``count`` negotiations): the load result and each metered
    process's CPU µs per negotiation."""
    settings = load_settings(v.consumer.dir)
    url = settings.management_url + "/api/negotiations?wait=30"
    headers = {"Authorization": f"Bearer {settings.management_token()}",
               "Content-Type": "application/json"}
    body = msgspec.json.encode({"provider": v.provider.url, "datasetId": DATASET})

    async def call() -> bool:
        async with session.post(url, data=body, headers=headers) as resp:
            doc: dict[str, Any] = msgspec.json.decode(await resp.read())
            return resp.status == 201 and doc.get("state") == "FINALIZED"

    pids = {name: p.process.pid for name, p in zip(PROCESSES, (v.provider, v.consumer),
                                                      strict=True) if p.process} | v.more
    beside = asyncio.create_task(v.during(session, duration_s)) if v.during else None
    server0 = v.server_cpu() if v.server_cpu else 0.0
    with CpuMeter(pids) as cpu:
        result = await load(call, concurrency=concurrency, duration_s=duration_s,
                            max_count=count)
    result.idle_cores = cpu.idle_cores
    used = dict(cpu.cpu_s)
    if v.server_cpu:
        used[v.server] = v.server_cpu() - server0
    if beside is not None:
        await beside
    per = {n: s / max(1, result.completed) * 1e6 for n, s in used.items()}
    log(f"  {result.completed} negotiations, {result.rate:.1f}/s, CPU µs each: "
        + ", ".join(f"{n} {us:.0f}" for n, us in per.items())
        + f"; other processes on the box: {cpu.foreign_cores:.2f} cores"
        + f", idle {cpu.idle_cores:.2f} cores")
    return result, per


async def compare(variants: dict[str, Variant], *, rounds: int, duration_s: float,
                  warmup_s: float, label: str) -> None:
    """Warm each variant up, then ``rounds`` rounds of one phase each, in ABBA order."""
    connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        for name, v in variants.items():
            log(f"{label} {name}: warm-up {warmup_s:g} s")
            await phase(session, v, warmup_s)
        order = list(variants.items())
        for i in range(rounds):
            for name, v in order[::-1] if i % 2 else order:
                # Unmetered: the connections a consumer closed while the others ran (its
                # client keeps idle ones 15 s) are open again before the timed phase.
                log(f"{label} {name}, round {i + 1}/{rounds}: {REWARM_S:g} + {duration_s:g} s")
                await phase(session, v, REWARM_S)
                result, per = await phase(session, v, duration_s)
                v.results.append(result)
                v.cpu_us.append(per)


def round_ratio(on: Variant, off: Variant) -> float:
    """Median over the rounds of on's rate / off's rate in the same round."""
    ratios = [a.rate / b.rate for a, b in zip(on.results, off.results, strict=True) if b.rate]
    return statistics.median(ratios) if ratios else 0.0


def emit_cpu(what: str, on: Variant, off: Variant) -> None:
    """Each daemon's CPU µs per negotiation in both variants; ``on`` against ``off``."""
    c = f"c{CONCURRENCY}"
    for process in PROCESSES:
        emit(f"negotiation_cpu_us_{process}_{what}_off_{c}", off.median_cpu_us(process),
             "us/negotiation")
        emit(f"negotiation_cpu_us_{process}_{what}_on_{c}", on.median_cpu_us(process),
             "us/negotiation", limit=off.median_cpu_us(process))
