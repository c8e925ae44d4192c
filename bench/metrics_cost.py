"""What the metrics cost: negotiations per second with ``[metrics]`` on and off, same run.

Two pairs of connector daemons are created and started as ``make demo`` does; one pair has
``[metrics] enabled = false`` (no instrument is even created), the other a metrics listener
that is scraped every 5 s during its phases, as Prometheus would (its example configuration
says 15 s). The phases alternate, off, on, on, off, off, on, ..., each at c=64 through the
consumer's management API (as ``bench/negotiation.py`` drives it), so that the growth of the
stored negotiations and the load of other processes fall on both variants alike. The rate
and the daemons' CPU per negotiation are taken as medians over each variant's phases; the
``on`` lines carry the ``off`` figure as ``limit``, so ``ratio`` is what is left with
metrics on (target: at least 0.95). Then the store of the ``on`` provider is taken away
(another connection holds its write lock) and given back: the seconds until
``/health/ready`` says 503, then 200 (target: within a second).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from tests.harness import Participant, create_space, free_port, start, stop

from bench import CpuMeter, emit, load, log
from connector.config import load_settings

DATASET = "example-weather"
CONCURRENCY = 64
ROUNDS = 4  # pairs of phases, off then on, then on then off, ...
MAX_PER_PHASE = 100_000
# Three times as often as the 15 s of Prometheus's example configuration (its default is 1 min):
# a scrape of a busy daemon costs a few ms of CPU (~60 KB of exposition).
SCRAPE_INTERVAL_S = 5.0


def _pid(p: Participant) -> int:
    assert p.process is not None, f"{p.name} is not running"
    return p.process.pid


def make_pair(root: Path, metrics: bool) -> tuple[Participant, Participant, list[str]]:
    provider, consumer = create_space(root)
    targets = []
    for p in (provider, consumer):
        with (p.dir / "connector.toml").open("a") as f:
            if metrics:
                target = f"127.0.0.1:{free_port()}"
                targets.append(target)
                f.write(f'\n[metrics]\nlisten = "{target}"\n')
            else:
                f.write("\n[metrics]\nenabled = false\n")
    return provider, consumer, targets


async def scrape(session: aiohttp.ClientSession, targets: list[str], stop_at: float) -> int:
    """Scrape ``targets`` every SCRAPE_INTERVAL_S until ``stop_at``; the number of scrapes."""
    done = 0
    while time.perf_counter() < stop_at:
        for target in targets:
            async with session.get(f"http://{target}/metrics") as resp:
                await resp.read()
                done += 1
        await asyncio.sleep(SCRAPE_INTERVAL_S)
    return done


async def phase(session: aiohttp.ClientSession, provider: Participant, consumer: Participant,
                targets: list[str], duration_s: float) -> tuple[float, float, int]:
    """One timed phase: (negotiations/s, daemons' CPU µs per negotiation, errors)."""
    settings = load_settings(consumer.dir)
    url = settings.management_url + "/api/negotiations?wait=30"
    headers = {"Authorization": f"Bearer {settings.management_token()}",
               "Content-Type": "application/json"}
    body = msgspec.json.encode({"provider": provider.url, "datasetId": DATASET})

    async def call() -> bool:
        async with session.post(url, data=body, headers=headers) as resp:
            doc: dict[str, Any] = msgspec.json.decode(await resp.read())
            return resp.status == 201 and doc.get("state") == "FINALIZED"

    pids = {p.name: _pid(p) for p in (provider, consumer)}
    scraper = asyncio.create_task(scrape(session, targets, time.perf_counter() + duration_s))
    with CpuMeter(pids) as cpu:
        result = await load(call, concurrency=CONCURRENCY, duration_s=duration_s,
                            max_count=MAX_PER_PHASE)
    await scraper
    used = sum(cpu.cpu_s.values())
    return result.rate, used / max(1, result.completed) * 1e6, result.errors


async def drive(pairs: dict[str, tuple[Participant, Participant, list[str]]],
                duration_s: float, warmup_s: float) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in pairs}
    errors = 0
    connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        for name, (provider, consumer, targets) in pairs.items():
            log(f"metrics {name}: warm-up {warmup_s:g} s")
            await phase(session, provider, consumer, targets, warmup_s)
        for i in range(ROUNDS):
            order = list(pairs.items())
            for name, (provider, consumer, targets) in order[::-1] if i % 2 else order:
                rate, cpu_us, failed = await phase(session, provider, consumer, targets,
                                                   duration_s)
                errors += failed
                log(f"metrics {name} round {i + 1}: {rate:.1f} negotiations/s, "
                    f"{cpu_us:.0f} µs CPU each, {failed} errors")
                out[name].append((rate, cpu_us))
    emit("metrics_bench_errors", errors, "count")
    return out


def ready_status(target: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{target}/health/ready", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def until_status(target: str, status: int, timeout_s: float = 30.0) -> float:
    """Seconds until /health/ready answers ``status`` (polled every 10 ms)."""
    t0 = time.perf_counter()
    while ready_status(target) != status:
        if time.perf_counter() - t0 > timeout_s:
            raise RuntimeError(f"/health/ready never answered {status}")
        time.sleep(0.01)
    return time.perf_counter() - t0


def store_outage(participant: Participant, target: str) -> tuple[float, float]:
    """Seconds from taking the store's write lock to ready 503, and from releasing it to 200."""
    until_status(target, 200)
    holder = sqlite3.connect(load_settings(participant.dir).database, isolation_level=None,
                             timeout=10)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        down = until_status(target, 503)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    return down, until_status(target, 200)


def run(*, quick: bool) -> None:
    duration_s = 2.0 if quick else 6.0
    warmup_s = 0.5 if quick else 1.0
    root = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    running: list[Participant] = []
    try:
        pairs = {"off": make_pair(root / "off", False), "on": make_pair(root / "on", True)}
        for provider, consumer, _ in pairs.values():
            for p in (provider, consumer):
                start(p)
                running.append(p)
        results = asyncio.run(drive(pairs, duration_s, warmup_s))
        provider, _, targets = pairs["on"]
        down_s, up_s = store_outage(provider, targets[0])
    finally:
        for p in running:
            stop(p)
        shutil.rmtree(root, ignore_errors=True)
    # Medians over the rounds: one phase slowed by another process must not decide.
    rate = {name: statistics.median(r for r, _ in rows) for name, rows in results.items()}
    cpu = {name: statistics.median(c for _, c in rows) for name, rows in results.items()}
    c = f"c{CONCURRENCY}"
    emit(f"negotiations_per_s_metrics_off_{c}", rate["off"], "negotiations/s")
    emit(f"negotiations_per_s_metrics_on_{c}", rate["on"], "negotiations/s", limit=rate["off"])
    emit(f"negotiation_daemon_cpu_us_metrics_off_{c}", cpu["off"], "us/negotiation")
    emit(f"negotiation_daemon_cpu_us_metrics_on_{c}", cpu["on"], "us/negotiation",
         limit=cpu["off"])
    emit("metrics_negotiation_rate_cost_percent", (1 - rate["on"] / rate["off"]) * 100, "%")
    # What the daemons' CPU allows (negotiations per CPU-second of provider + consumer): the
    # rate of a CPU-bound box, which the load of other processes disturbs far less.
    emit(f"negotiations_per_cpu_s_metrics_off_{c}", 1e6 / cpu["off"], "negotiations/cpu-s")
    emit(f"negotiations_per_cpu_s_metrics_on_{c}", 1e6 / cpu["on"], "negotiations/cpu-s",
         limit=1e6 / cpu["off"])
    emit("metrics_negotiation_cpu_cost_percent", (1 - cpu["off"] / cpu["on"]) * 100, "%")
    # Issue target: ready goes to 503 within a second when the store is taken away.
    emit("health_ready_503_after_store_lock_s", down_s, "s", limit=1.0)
    emit("health_ready_200_after_store_unlock_s", up_s, "s", limit=1.0)
