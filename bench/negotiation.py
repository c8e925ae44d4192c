"""Contract negotiations per second between two real connector daemons on loopback.

The provider and the consumer are created and started exactly as ``make demo`` does
(``tests.harness.create_space`` and ``start``): two ``connector run`` processes speaking
DSP over HTTPS on 127.0.0.1. The bench process is the driver, a third process: one aiohttp
ClientSession calls the consumer's management API (plain HTTP on port+1, bearer token)
with ``POST /api/negotiations?wait=30``, which returns once the negotiation is terminal.

Beside it, in the same run, the raw loopback HTTPS request rate of a minimal aiohttp
server and client (``bench.loopback``) is measured as the physical limit.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from tests.harness import Participant, create_space, start, stop

from bench import CpuMeter, LoadResult, emit, load, log, own_metrics
from bench.loopback import RawServer
from bench.loopback import measure as measure_raw
from connector.config import load_settings

DATASET = "example-weather"
OFFER = "urn:offer:example-weather:members-only"
CONCURRENCIES = (1, 64)
# HTTPS requests between the connectors per negotiation: the catalogue request, then the
# four DSP messages (request, agreement, verification, finalized event). The driver's
# call is plain HTTP to the management API and not counted.
HTTPS_PER_NEGOTIATION = 5
MAX_PER_PHASE = 100_000  # every phase is bounded in count as well as in time


@dataclass
class Phase:
    label: str
    concurrency: int
    result: LoadResult
    cpu: CpuMeter  # provider, consumer and driver CPU during the timed phase


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _pid(p: Participant) -> int:
    assert p.process is not None, f"{p.name} is not running"
    return p.process.pid


async def drive(provider: Participant, consumer: Participant, *, duration_s: float,
                warmup_s: float) -> tuple[list[Phase], int]:
    """Every (variant, concurrency) phase; returns the phases and the warm-up errors."""
    settings = load_settings(consumer.dir)
    url = settings.management_url + "/api/negotiations?wait=30"
    headers = {"Authorization": f"Bearer {settings.management_token()}",
               "Content-Type": "application/json"}
    bodies = {
        "catalog": msgspec.json.encode({"provider": provider.url, "datasetId": DATASET}),
        "offer": msgspec.json.encode({"provider": provider.url, "datasetId": DATASET,
                                      "offerId": OFFER}),
    }
    pids = {p.name: _pid(p) for p in (provider, consumer)} | {"driver": os.getpid()}
    phases: list[Phase] = []
    warmup_errors = 0
    connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for label, body in bodies.items():

            async def call(body: bytes = body) -> bool:
                async with session.post(url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    if resp.status != 201:
                        raise RuntimeError(f"HTTP {resp.status}: {raw[:200]!r}")
                    doc: dict[str, Any] = msgspec.json.decode(raw)
                    if doc.get("state") != "FINALIZED":
                        raise RuntimeError(f"negotiation ended {doc.get('state')}: "
                                           f"{doc.get('errorDetail') or doc}")
                    return True

            for conc in CONCURRENCIES:
                log(f"negotiation {label} c={conc}: warm-up {warmup_s:g} s")
                warm = await load(call, concurrency=conc, duration_s=warmup_s,
                                  max_count=MAX_PER_PHASE)
                warmup_errors += warm.errors
                if warm.first_error:
                    log(f"  warm-up error: {warm.first_error}")
                log(f"negotiation {label} c={conc}: {duration_s:g} s")
                with CpuMeter(pids) as cpu:
                    result = await load(call, concurrency=conc, duration_s=duration_s,
                                        max_count=MAX_PER_PHASE)
                log(f"  {result.completed} negotiations, {result.rate:.1f}/s, "
                    f"p50 {result.p(50):.1f} ms, errors {result.errors}, CPU s "
                    + ", ".join(f"{n} {v:.2f}" for n, v in cpu.cpu_s.items())
                    + f"; other processes on the box: {cpu.foreign_cores:.2f} cores")
                if result.first_error:
                    log(f"  first error: {result.first_error}")
                phases.append(Phase(label, conc, result, cpu))
    return phases, warmup_errors


def run(*, quick: bool) -> None:
    duration_s = 2.0 if quick else 10.0
    warmup_s = 0.5 if quick else 1.0

    # 1. The limit: raw keep-alive HTTPS at c=64, with nothing else running.
    raw = RawServer()
    try:
        raw.start()
        assert raw.process is not None
        raw_result, raw_cpu = asyncio.run(measure_raw(
            raw, concurrency=64, duration_s=duration_s, warmup_s=warmup_s,
            max_count=2_000_000))
        raw_rss = rss_mib(raw.process.pid)
    finally:
        raw.stop()
    raw_rps = raw_result.rate
    emit("raw_https_requests_per_s_c64", raw_rps, "req/s")
    emit("raw_https_p50_ms_c64", raw_result.p(50), "ms")
    emit("raw_https_errors", raw_result.errors, "count")
    emit("raw_https_server_startup_ms", raw.startup_ms, "ms")
    emit("raw_https_server_rss_mib", raw_rss, "MiB")
    for name, used in raw_cpu.cpu_s.items():
        emit(f"raw_https_cpu_us_{name}_c64", used / max(1, raw_result.completed) * 1e6,
             "us/req")
    foreign = [raw_cpu.foreign_cores]

    # 2. Two connector daemons, created and started as the demo does.
    root = Path(tempfile.mkdtemp(prefix="bench-negotiation-"))
    participants: list[Participant] = []
    try:
        provider, consumer = create_space(root)
        own_metrics(provider.dir, consumer.dir)
        participants = [provider, consumer]
        startup_ms: dict[str, float] = {}
        for p in participants:
            t0 = time.perf_counter()
            start(p)
            startup_ms[p.name] = (time.perf_counter() - t0) * 1000
            log(f"{p.name} ready in {startup_ms[p.name]:.0f} ms at {p.url}")
        rss_ready = {p.name: rss_mib(_pid(p)) for p in participants}
        phases, warmup_errors = asyncio.run(
            drive(provider, consumer, duration_s=duration_s, warmup_s=warmup_s))
        rss = {p.name: rss_mib(_pid(p)) for p in participants}
    finally:
        for p in participants:
            stop(p)
        shutil.rmtree(root, ignore_errors=True)

    errors = warmup_errors
    for ph in phases:
        r = ph.result
        tag = "" if ph.label == "catalog" else "_offer_id"
        c = f"c{ph.concurrency}"
        errors += r.errors
        emit(f"negotiations_per_s{tag}_{c}", r.rate, "negotiations/s")
        emit(f"negotiation_p50_ms{tag}_{c}", r.p(50), "ms")
        emit(f"negotiation_p95_ms{tag}_{c}", r.p(95), "ms")
        if ph.concurrency == 64:
            emit(f"negotiation{tag}_dsp_messages_per_s_{c}", r.rate * HTTPS_PER_NEGOTIATION,
                 "msg/s", limit=raw_rps)
        if r.completed:
            for name, used in ph.cpu.cpu_s.items():
                emit(f"negotiation{tag}_cpu_us_{name}_{c}", used / r.completed * 1e6,
                     "us/negotiation")
            emit(f"negotiation{tag}_cores_busy_{c}",
                 sum(ph.cpu.cpu_s.values()) / r.elapsed_s, "cores", limit=os.cpu_count())
        foreign.append(ph.cpu.foreign_cores)
    emit("negotiation_errors", errors, "count")
    for name in ("provider", "consumer"):
        emit(f"daemon_startup_ms_{name}", startup_ms[name], "ms", limit=raw.startup_ms)
    for name in ("provider", "consumer"):
        emit(f"daemon_rss_mib_ready_{name}", rss_ready[name], "MiB", limit=raw_rss)
    for name in ("provider", "consumer"):
        emit(f"daemon_rss_mib_{name}", rss[name], "MiB", limit=raw_rss)
    # Not a result: how busy the rest of the box was (max over the timed phases).
    emit("host_other_processes_cores_busy_max", max(foreign), "cores", limit=os.cpu_count())
