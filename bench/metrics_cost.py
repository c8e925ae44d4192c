"""What the metrics cost: negotiations per second with ``[metrics]`` on and off, same run.

Two pairs of connector daemons are created and started as ``make demo`` does; one pair has
``[metrics] enabled = false`` (no instrument is even created), the other a metrics listener
that is scraped every 5 s during its phases, as Prometheus would (its example configuration
says 15 s). The phases alternate, off, on, on, off, off, on, ..., each at c=64 through the
consumer's management API (``bench/ab.py``), so that the growth of the stored negotiations
and the load of other processes fall on both variants alike. The rate and each daemon's CPU
per negotiation are taken as medians over each variant's phases, and the on/off rate ratio
as the median of the rounds' ratios; the ``on`` lines carry the ``off`` figure as ``limit``,
so ``ratio`` is what is left with metrics on (target: at least 0.95). Then the store of the
``on`` provider is taken away (another connection holds its write lock) and given back: the
seconds until ``/health/ready`` says 503, then 200 (target: within a second).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from tests.harness import Participant, free_port

from bench import emit, log
from bench.ab import CONCURRENCY, Variant, compare, emit_cpu, make_pair, round_ratio, running
from connector.config import load_settings

ROUNDS = 6  # one phase of each variant per round, in ABBA order
# Three times as often as the 15 s of Prometheus's example configuration (its default is 1 min):
# a scrape of a busy daemon costs a few ms of CPU (~60 KB of exposition).
SCRAPE_INTERVAL_S = 5.0


def scraper(targets: list[str]) -> Callable[[aiohttp.ClientSession, float], Awaitable[int]]:
    """Scrape ``targets`` every SCRAPE_INTERVAL_S for a phase; the number of scrapes."""
    async def scrape(session: aiohttp.ClientSession, duration_s: float) -> int:
        stop_at, done = time.perf_counter() + duration_s, 0
        while time.perf_counter() < stop_at:
            for target in targets:
                async with session.get(f"http://{target}/metrics") as resp:
                    await resp.read()
                    done += 1
            await asyncio.sleep(min(SCRAPE_INTERVAL_S, max(0.0, stop_at - time.perf_counter())))
        return done
    return scrape


def metrics_pair(root: Path) -> tuple[Variant, list[str]]:
    """A pair with a metrics listener each (scraped during its phases), and the targets."""
    targets = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    provider, consumer = make_pair(root, "")
    for p, target in zip((provider, consumer), targets, strict=True):
        with (p.dir / "connector.toml").open("a") as f:
            f.write(f'\n[metrics]\nlisten = "{target}"\n')
    return Variant(provider, consumer, during=scraper(targets)), targets


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
    try:
        on, targets = metrics_pair(root / "on")
        off = Variant(*make_pair(root / "off", "[metrics]\nenabled = false"))
        variants = {"off": off, "on": on}
        with running(off, on):
            asyncio.run(compare(variants, rounds=2 if quick else ROUNDS,
                                duration_s=duration_s, warmup_s=warmup_s, label="metrics"))
            down_s, up_s = store_outage(on.provider, targets[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    log(f"metrics: {len(on.results)} phases per variant")
    emit("metrics_bench_errors", on.errors + off.errors, "count")
    # Medians over the phases: one phase slowed by another process must not decide.
    rate = {"on": on.median_rate(), "off": off.median_rate()}
    cpu = {"on": on.median_cpu_us(), "off": off.median_cpu_us()}
    c = f"c{CONCURRENCY}"
    emit(f"negotiations_per_s_metrics_off_{c}", rate["off"], "negotiations/s")
    emit(f"negotiations_per_s_metrics_on_{c}", rate["on"], "negotiations/s", limit=rate["off"])
    # The target (#14: at most 5 % of the rate): the median of the per-round ratios.
    emit(f"negotiations_per_s_metrics_ratio_median_{c}", round_ratio(on, off), "ratio")
    emit(f"negotiation_daemon_cpu_us_metrics_off_{c}", cpu["off"], "us/negotiation")
    emit(f"negotiation_daemon_cpu_us_metrics_on_{c}", cpu["on"], "us/negotiation",
         limit=cpu["off"])
    emit_cpu("metrics", on, off)
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
